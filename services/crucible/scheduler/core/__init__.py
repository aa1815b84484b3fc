"""Pure domain logic of the scheduler: job states, progress parsing, memory sizing, placement and offer selection.

Nothing here imports grpc or touches the network or the disk, so every function is unit-tested on its own.
"""
