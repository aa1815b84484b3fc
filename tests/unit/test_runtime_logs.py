"""configure_logging: records of libraries that set up logging before it still reach the service's one JSON handler.

A service forked from the preloading process has transformers imported before its log is configured.
"""

from __future__ import annotations

import io
import json
import logging

from crucible.runtime.logs import configure_logging


def test_transformers_imported_first_logs_through_the_json_handler() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_default_handler()
    transformers_logging.disable_propagation()
    library = transformers_logging.get_logger("transformers.models.llama")  # installs transformers' own handler
    own = transformers_logging._default_handler  # only transformers' own handler, not one another test attached
    assert isinstance(own, logging.StreamHandler)
    own_stream = io.StringIO()
    previous = own.setStream(own_stream)  # stands for the stderr the preloading process had
    buffer = io.StringIO()
    configure_logging("proposer", "INFO", "json", stream=buffer)
    try:
        library.warning("`past_key_values` is deprecated")
        lines = buffer.getvalue().splitlines()
        assert own_stream.getvalue() == ""
        assert [json.loads(line)["msg"] for line in lines] == ["`past_key_values` is deprecated"]
        assert json.loads(lines[0])["service"] == "proposer"
    finally:
        logging.getLogger().handlers.clear()
        if previous is not None:
            own.setStream(previous)
        transformers_logging.disable_propagation()
        transformers_logging.enable_default_handler()
