"""Calibration of raw detector scores into P(machine): two Gaussians per member and an optional logistic ensemble.

Parameters live in versioned JSON files keyed by model pair: built-in ones (calibrations/) and ones `fit` writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "crucible.detector.calibration"
FORMAT_VERSION = 1
BUILTIN_DIR = Path(__file__).resolve().parent / "calibrations"
#: `CalibrationFile.source` of the files shipped in BUILTIN_DIR; every other source is a user's file.
BUILTIN_SOURCE = "builtin"
MEMBERS = ("fast_detectgpt", "binoculars", "classifier", "likelihood")
#: Per-token means from the Fast-DetectGPT forward pass, always computed: usable as ensemble features, not members.
BY_PRODUCTS = ("log_likelihood", "log_rank", "entropy")
FEATURES = MEMBERS + BY_PRODUCTS

METHOD_NONE = "none"
METHOD_TWO_GAUSSIAN = "two_gaussian"
METHOD_LOGISTIC_ENSEMBLE = "logistic_ensemble"


class CalibrationError(ValueError):
    """A calibration file is malformed or cannot be fitted from the data given."""


def model_key(name: str) -> str:
    """How calibration entries name a model: the last path component, lower case ('/m/gpt-neo-2.7B' -> 'gpt-neo-2.7b')."""
    return name.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1].lower()


@dataclasses.dataclass(frozen=True)
class TwoGaussian:
    """p(machine | c) = N(c; mu1, s1) / (N(c; mu0, s0) + N(c; mu1, s1)), equal priors (the reference's form)."""

    mu0: float
    sigma0: float
    mu1: float
    sigma1: float

    def __post_init__(self) -> None:
        if not (self.sigma0 > 0 and self.sigma1 > 0) or not all(map(math.isfinite, dataclasses.astuple(self))):
            raise CalibrationError(f"two-Gaussian parameters must be finite with positive sigmas: {self}")

    def probability(self, score: float) -> float:
        """P(machine) of one raw score, computed in log space (no underflow far from both means)."""
        if not math.isfinite(score):
            return float("nan")
        log0 = -0.5 * ((score - self.mu0) / self.sigma0) ** 2 - math.log(self.sigma0)
        log1 = -0.5 * ((score - self.mu1) / self.sigma1) ** 2 - math.log(self.sigma1)
        return 1.0 / (1.0 + math.exp(min(700.0, log0 - log1)))

    def to_json(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def fit(cls, human: Sequence[float], machine: Sequence[float]) -> TwoGaussian:
        """Maximum-likelihood means and standard deviations of each class (numpy's std, as the reference fits)."""
        h, m = np.asarray(human, dtype=np.float64), np.asarray(machine, dtype=np.float64)
        if h.size < 2 or m.size < 2:
            raise CalibrationError("fitting needs at least two human and two machine texts")
        return cls(float(h.mean()), max(float(h.std()), 1e-6), float(m.mean()), max(float(m.std()), 1e-6))


@dataclasses.dataclass(frozen=True)
class LogisticEnsemble:
    """P(machine) = sigmoid(intercept + sum_i coef_i * (raw_i - mean_i) / scale_i) over named raw scores (features).

    Features are members' raw scores (fast_detectgpt, binoculars, classifier) and the pass's by-products
    (log_likelihood, log_rank, entropy).
    """

    members: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float

    def __post_init__(self) -> None:
        n = len(self.members)
        if n == 0 or not (len(self.mean) == len(self.scale) == len(self.coef) == n):
            raise CalibrationError("logistic ensemble needs one mean, scale and coefficient per member")
        unknown = set(self.members) - set(FEATURES)
        if unknown:
            raise CalibrationError(f"unknown feature(s) in logistic ensemble: {sorted(unknown)} (known: {', '.join(FEATURES)})")
        if not all(s > 0 and math.isfinite(s) for s in self.scale) or not all(
            map(math.isfinite, (*self.mean, *self.coef, self.intercept))
        ):
            raise CalibrationError("logistic ensemble parameters must be finite, with positive scales")

    def probability(self, raw: Mapping[str, float]) -> float:
        """P(machine) from the raw scores of (at least) this ensemble's members."""
        z = self.intercept
        for name, mean, scale, coef in zip(self.members, self.mean, self.scale, self.coef, strict=True):
            z += coef * (raw[name] - mean) / scale
        if not math.isfinite(z):
            return float("nan")
        return 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, z))))

    def to_json(self) -> dict[str, Any]:
        return {
            "members": list(self.members),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "coef": list(self.coef),
            "intercept": self.intercept,
        }

    @classmethod
    def fit(
        cls,
        members: Sequence[str],
        features: np.ndarray,
        labels: np.ndarray,
        groups: Sequence[Any] | None = None,
        *,
        c: float | None = None,
    ) -> tuple[LogisticEnsemble, float]:
        """Fit on raw scores [n, len(members)] and labels (1 = machine); returns the ensemble and the chosen C.

        Features are standardised, then an L2-regularised logistic regression (scikit-learn) picks its inverse
        regularisation C from a grid by 5-fold cross-validated log-loss (folds by `groups`, e.g. the text pair,
        when given, so a human text and its machine continuation never sit on both sides of a fold). A given `c`
        (e.g. from `choose_c_leaving_groups_out`) is used as it is.
        """
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
        from sklearn.model_selection import GroupKFold

        if len(set(labels.tolist())) != 2:
            raise CalibrationError("fitting needs both human and machine texts")
        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        scale[scale == 0] = 1.0
        x = (features - mean) / scale
        folds = min(5, int(np.bincount(labels).min()))
        if c is not None:
            if not (c > 0 and math.isfinite(c)):
                raise CalibrationError(f"regularisation C must be positive and finite, got {c}")
        elif folds >= 2:
            cv: Any = folds
            if groups is not None and len(set(groups)) >= folds:
                cv = list(GroupKFold(n_splits=folds).split(x, labels, groups=list(groups)))
            with warnings.catch_warnings():  # scikit-learn 1.8 announces parameter changes; the defaults here are L2
                warnings.simplefilter("ignore", FutureWarning)
                search = LogisticRegressionCV(Cs=np.logspace(-3, 2, 11), cv=cv, scoring="neg_log_loss", max_iter=2000).fit(
                    x, labels
                )
            c = float(np.atleast_1d(search.C_)[0])
        else:
            c = 1.0
        model = LogisticRegression(C=c, max_iter=2000).fit(x, labels)
        return cls(
            tuple(members),
            tuple(map(float, mean)),
            tuple(map(float, scale)),
            tuple(map(float, model.coef_[0])),
            float(model.intercept_[0]),
        ), c


@dataclasses.dataclass(frozen=True)
class CalibrationEntry:
    """Parameters for one model set: sampling/scoring pair (and classifier, when the ensemble uses one); an entry that
    names a `likelihood` model applies only to a detector running that model as its likelihood member."""

    sampling: str
    scoring: str
    members: Mapping[str, TwoGaussian]
    ensemble: LogisticEnsemble | None = None
    classifier: str = ""
    revisions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    aliases: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    fitted_on: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    likelihood: str = ""

    def matches(self, sampling: tuple[str, str], scoring: tuple[str, str], likelihood: tuple[str, str] | None = None) -> bool:
        """True when this entry is for these (name, revision) models; a recorded revision must match exactly.

        An entry with a likelihood model matches only that likelihood model; one without matches any detector."""
        roles = [("sampling", sampling), ("scoring", scoring)]
        if self.likelihood:
            if likelihood is None:
                return False
            roles.append(("likelihood", likelihood))
        return all(self._role_matches(role, name, revision) for role, (name, revision) in roles)

    def _role_matches(self, role: str, name: str, revision: str) -> bool:
        names = {model_key(getattr(self, role)), *(model_key(a) for a in self.aliases.get(role, ()))}
        wanted = self.revisions.get(role)
        return model_key(name) in names and not (wanted and wanted != revision)

    def matches_models(self, sampling: tuple[str, str], scoring: tuple[str, str]) -> bool:
        """True when this entry is for these (name, revision) sampling/scoring models, whatever its likelihood model."""
        return self._role_matches("sampling", *sampling) and self._role_matches("scoring", *scoring)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sampling": self.sampling,
            "scoring": self.scoring,
            "members": {k: v.to_json() for k, v in self.members.items()},
        }
        if self.revisions:
            out["revisions"] = dict(self.revisions)
        if self.classifier:
            out["classifier"] = self.classifier
        if self.likelihood:
            out["likelihood"] = self.likelihood
        if self.ensemble is not None:
            out["ensemble"] = self.ensemble.to_json()
        if self.aliases:
            out["aliases"] = {k: list(v) for k, v in self.aliases.items()}
        if self.fitted_on:
            out["fitted_on"] = dict(self.fitted_on)
        return out


@dataclasses.dataclass(frozen=True)
class CalibrationFile:
    """A versioned calibration file: its version, where it came from, and its entries."""

    version: str
    source: str
    entries: tuple[CalibrationEntry, ...]
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "description": self.description,
            "entries": [e.to_json() for e in self.entries],
        }

    def write(self, path: Path) -> None:
        """Write the file as indented JSON (creating parent folders)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")


def _entry_from_json(raw: Any, where: str) -> CalibrationEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("sampling"), str) or not isinstance(raw.get("scoring"), str):
        raise CalibrationError(f"{where}: an entry needs string 'sampling' and 'scoring' model names")
    members_raw = raw.get("members") or {}
    if not isinstance(members_raw, dict):
        raise CalibrationError(f"{where}: 'members' must be an object")
    members: dict[str, TwoGaussian] = {}
    for name, params in members_raw.items():
        if name not in MEMBERS:
            raise CalibrationError(f"{where}: unknown member {name!r} (known: {', '.join(MEMBERS)})")
        try:
            members[name] = TwoGaussian(
                float(params["mu0"]), float(params["sigma0"]), float(params["mu1"]), float(params["sigma1"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{where}: member {name!r} needs numeric mu0, sigma0, mu1, sigma1 ({exc})") from exc
    ensemble = None
    if raw.get("ensemble") is not None:
        e = raw["ensemble"]
        try:
            ensemble = LogisticEnsemble(
                tuple(e["members"]),
                tuple(map(float, e["mean"])),
                tuple(map(float, e["scale"])),
                tuple(map(float, e["coef"])),
                float(e["intercept"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{where}: malformed 'ensemble' ({exc})") from exc
    aliases = {k: tuple(v) for k, v in (raw.get("aliases") or {}).items()}
    return CalibrationEntry(
        raw["sampling"],
        raw["scoring"],
        members,
        ensemble,
        str(raw.get("classifier", "")),
        dict(raw.get("revisions") or {}),
        aliases,
        dict(raw.get("fitted_on") or {}),
        str(raw.get("likelihood", "")),
    )


def load_calibration_file(path: Path, *, source: str | None = None) -> CalibrationFile:
    """Read and validate a calibration file; raises CalibrationError naming the file on any problem."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read calibration file {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CalibrationError(f'{path}: not a detector calibration file (expected "format": "{FORMAT}")')
    if raw.get("format_version") != FORMAT_VERSION:
        raise CalibrationError(
            f"{path}: format_version {raw.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
        )
    if not isinstance(raw.get("version"), str) or not raw["version"]:
        raise CalibrationError(f"{path}: needs a non-empty string 'version'")
    entries = tuple(_entry_from_json(e, f"{path} entry {i}") for i, e in enumerate(raw.get("entries") or []))
    return CalibrationFile(raw["version"], source or str(path), entries, str(raw.get("description", "")))


def builtin_calibrations() -> list[CalibrationFile]:
    """The calibration files shipped with the detector (newest version last), source 'builtin'."""
    return [load_calibration_file(p, source=BUILTIN_SOURCE) for p in sorted(BUILTIN_DIR.glob("*.json"))]


def calibration_files(calibration_file: str = "") -> list[CalibrationFile]:
    """The files the detector consults, in order: the user's `calibration_file` (when set), then the built-in ones."""
    files = [load_calibration_file(Path(calibration_file))] if calibration_file else []
    return files + builtin_calibrations()


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The calibration in force for the loaded models (or none): maps raw member scores to probabilities."""

    method: str
    version: str = ""
    source: str = ""
    members: Mapping[str, TwoGaussian] = dataclasses.field(default_factory=dict)
    ensemble: LogisticEnsemble | None = None

    @property
    def calibrated(self) -> bool:
        return self.method != METHOD_NONE

    def member_probability(self, member: str, raw: float) -> float | None:
        """P(machine) by one member alone, or None when this member has no parameters."""
        params = self.members.get(member)
        return params.probability(raw) if params is not None else None

    def probability(self, raw: Mapping[str, float]) -> float | None:
        """Detection.probability: the ensemble's when fitted (and its features were computed), else Fast-DetectGPT's.

        `raw` holds the members' raw scores and, for an ensemble over by-products, those too (RawScores.features()).
        """
        if self.ensemble is not None and all(m in raw for m in self.ensemble.members):
            return self.ensemble.probability(raw)
        if "fast_detectgpt" in raw:
            return self.member_probability("fast_detectgpt", raw["fast_detectgpt"])
        return None


UNCALIBRATED = Calibration(METHOD_NONE)

#: Inverse regularisation strengths tried by `choose_c_leaving_groups_out` (strong to weak).
C_GRID = tuple(float(v) for v in np.logspace(-4, 2, 13))


def choose_c_leaving_groups_out(
    features: np.ndarray, labels: np.ndarray, groupings: Sequence[Sequence[Any]], grid: Sequence[float] = C_GRID
) -> tuple[float, dict[float, float]]:
    """The C whose logistic regression predicts best on groups it was not fitted on; returns it and the mean
    held-out log-loss of every C tried.

    Each grouping (e.g. the domain of every text, the source model of every text) is split leave-one-group-out: fit
    on the other groups (features standardised on them), score the log-loss of the left-out group; the losses of
    every split of every grouping are averaged. On ties the smaller C (stronger regularisation) wins.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    splits = []
    for groups in groupings:
        values = np.asarray(list(groups))
        if values.shape[0] != labels.shape[0]:
            raise CalibrationError("every grouping needs one group per text")
        for g in sorted(set(values.tolist())):
            test = values == g
            if len(set(labels[~test].tolist())) == 2 and len(set(labels[test].tolist())) == 2:
                splits.append((~test, test))
    if not splits:
        raise CalibrationError("no grouping has two groups with both human and machine texts to leave out")
    losses: dict[float, float] = {}
    for c in grid:
        total = 0.0
        for train, test in splits:
            mean = features[train].mean(axis=0)
            scale = features[train].std(axis=0)
            scale[scale == 0] = 1.0
            model = LogisticRegression(C=c, max_iter=2000).fit((features[train] - mean) / scale, labels[train])
            total += log_loss(labels[test], model.predict_proba((features[test] - mean) / scale)[:, 1], labels=[0, 1])
        losses[float(c)] = total / len(splits)
    best = min(losses.values())
    return min(c for c, loss in losses.items() if loss <= best + 1e-9), losses


def _tiers(files: Sequence[CalibrationFile]) -> list[list[CalibrationFile]]:
    """The user's files, then the built-in ones: a user's entry always comes before a built-in one."""
    return [[f for f in files if f.source != BUILTIN_SOURCE], [f for f in files if f.source == BUILTIN_SOURCE]]


def calibrated_likelihood_model(files: Sequence[CalibrationFile], sampling: tuple[str, str], scoring: tuple[str, str]) -> str:
    """What `likelihood_model = auto` loads for these (name, revision) sampling/scoring models: when the user's files
    have entries for them, the likelihood model one of those was fitted with ('' when none was: the user calibrated
    the models alone); else the one a built-in entry for them names; '' when none does."""
    for tier in _tiers(files):
        entries = [e for f in tier for e in f.entries if e.matches_models(sampling, scoring)]
        if entries:
            return next((e.likelihood for e in entries if e.likelihood), "")
    return ""


def select_calibration(
    files: Sequence[CalibrationFile],
    sampling: tuple[str, str],
    scoring: tuple[str, str],
    enabled_members: Sequence[str],
    classifier: str = "",
    likelihood: tuple[str, str] | None = None,
) -> Calibration:
    """The first matching entry across `files`, the user's files' entries before any built-in one, or UNCALIBRATED.

    Within each (the user's, the built-in), with a likelihood model, entries fitted with it (`likelihood` names it)
    come first, then the entries of the sampling/scoring pair alone. An ensemble is used only when every member it
    needs is enabled and, if it uses the classifier, the classifier is the one it was fitted with; otherwise the
    per-member Gaussians still apply.
    """
    ordered: list[tuple[CalibrationFile, CalibrationEntry]] = []
    for tier in _tiers(files):
        ordered += [(f, e) for f in tier for e in f.entries if e.likelihood and likelihood is not None]
        ordered += [(f, e) for f in tier for e in f.entries if not e.likelihood]
    for file, entry in ordered:
        if not entry.matches(sampling, scoring, likelihood):
            continue
        members = {k: v for k, v in entry.members.items() if k in enabled_members}
        if "classifier" in members and model_key(entry.classifier or "") != model_key(classifier or ""):
            members.pop("classifier")
        ensemble = entry.ensemble
        if ensemble is not None and (
            not set(ensemble.members) <= set(enabled_members) | set(BY_PRODUCTS)
            or ("classifier" in ensemble.members and model_key(entry.classifier) != model_key(classifier))
        ):
            ensemble = None
        if "fast_detectgpt" not in members and ensemble is None:
            continue
        method = METHOD_LOGISTIC_ENSEMBLE if ensemble is not None else METHOD_TWO_GAUSSIAN
        return Calibration(method, file.version, file.source, members, ensemble)
    return UNCALIBRATED


def fit_calibration(
    human: Sequence[Mapping[str, float]],
    machine: Sequence[Mapping[str, float]],
    *,
    members: Sequence[str],
    features: Sequence[str] | None = None,
    groups: Sequence[Any] | None = None,
    sampling: tuple[str, str],
    scoring: tuple[str, str],
    classifier: tuple[str, str] | None = None,
    likelihood: tuple[str, str] | None = None,
    version: str,
    fitted_on: Mapping[str, Any] | None = None,
    c: float | None = None,
) -> CalibrationEntry:
    """Fit two Gaussians per member and a logistic ensemble over `features` (default: the members) of labelled texts.

    `groups` (one per text, human texts first) keeps related texts in the same cross-validation fold.
    """
    if not members:
        raise CalibrationError("no members to calibrate")
    names = list(features or members)
    gaussians = {m: TwoGaussian.fit([h[m] for h in human], [x[m] for x in machine]) for m in members}
    try:
        matrix = np.array([[row[m] for m in names] for row in (*human, *machine)], dtype=np.float64)
    except KeyError as exc:
        raise CalibrationError(f"feature {exc} is missing from the scores") from None
    labels = np.array([0] * len(human) + [1] * len(machine))
    if not np.isfinite(matrix).all():
        raise CalibrationError("some raw scores are not finite; check the data")
    ensemble, c = LogisticEnsemble.fit(names, matrix, labels, groups, c=c)
    revisions = {"sampling": sampling[1], "scoring": scoring[1]}
    if likelihood is not None:
        revisions["likelihood"] = likelihood[1]
    return CalibrationEntry(
        sampling[0],
        scoring[0],
        gaussians,
        ensemble,
        classifier[0] if classifier else "",
        revisions,
        {},
        dict(fitted_on or {}, version=version, regularisation_c=c),
        likelihood[0] if likelihood else "",
    )
