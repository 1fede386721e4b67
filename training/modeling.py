"""Where the model comes from: a PaddleNLP hub name, a local checkpoint directory, or an offline scratch preset.

    --base-model ernie-3.0-mini-zh   -> ErnieForSequenceClassification.from_pretrained(name)   (needs internet)
    --base-model path/to/checkpoint  -> from_pretrained(directory)                              (always works)
    --base-model scratch:nano        -> ERNIE 3.0 nano architecture, random init, corpus-built vocabulary

The tokenizer always comes with the model: a hub model's vocab.txt, a checkpoint's bundled tokenizer files, or
the vocabulary built from the training corpus for scratch presets.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ernie_cls.errors import ConfigError, ModelLoadError
from ernie_cls.tokenization import ErnieTokenizerFast, build_vocab
from training.data import LabelMap
from training.ngrams import BRANCH_CONFIG_KEYS

log = logging.getLogger(__name__)


# ERNIE 3.0 architectures as published by PaddleNLP (configuration.py of paddlenlp 2.8.1); "pico" is a toy
# size for tests and smoke runs. vocab_size is replaced by the corpus vocabulary for scratch training.
_ERNIE3_COMMON = dict(
    hidden_act="gelu",
    initializer_range=0.02,
    max_position_embeddings=2048,
    type_vocab_size=4,
    task_type_vocab_size=16,
    use_task_id=True,
    pad_token_id=0,
)
SCRATCH_PRESETS: dict[str, dict] = {
    "pico": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    "nano": dict(hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1248),
    "micro": dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1536),
    "mini": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
}
HUB_HOSTS_TIMEOUT_S = 3.0


@dataclass
class ModelSource:
    kind: str  # "scratch" | "directory" | "hub"
    name: str  # preset size, directory path or hub name


def parse_base_model(base_model: str) -> ModelSource:
    if base_model.startswith("scratch:"):
        size = base_model.split(":", 1)[1]
        if size not in SCRATCH_PRESETS:
            raise ConfigError(
                f"Unknown scratch size {size!r}.", f"Use one of: {', '.join('scratch:' + s for s in SCRATCH_PRESETS)}."
            )
        return ModelSource("scratch", size)
    path = Path(base_model)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"--base-model {base_model} is a file.", "Pass the checkpoint directory that holds it.")
        return ModelSource("directory", str(path))
    if "/" in base_model or base_model.startswith("."):
        raise ConfigError(
            f"--base-model {base_model}: no such directory.", "Check the path of the checkpoint directory."
        )
    return ModelSource("hub", base_model)


def _hub_known(name: str) -> str:
    """The download URL of a PaddleNLP hub model, or an error naming the known ones."""
    from paddlenlp.transformers import ErnieModel

    urls = ErnieModel.pretrained_resource_files_map["model_state"]
    if name not in urls:
        known = ", ".join(sorted(n for n in urls if n.startswith("ernie-3.0")))
        raise ConfigError(
            f"{name!r} is neither a directory, a scratch:<size> preset, nor a PaddleNLP ERNIE model name.",
            f"Use a local checkpoint directory, scratch:nano|micro|mini, or one of: {known}.",
        )
    return urls[name]


def ensure_hub_reachable(name: str) -> None:
    """Fail fast (seconds, not a long download timeout) when the hub cannot be reached."""
    host = urlparse(_hub_known(name)).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=HUB_HOSTS_TIMEOUT_S).close()
    except OSError as err:
        raise ModelLoadError(
            f"Cannot download {name!r}: the model hub ({host}) is unreachable from this machine ({err}).",
            'On a machine with internet run `python -c "from paddlenlp.transformers import '
            f"ErnieForSequenceClassification as M, ErnieTokenizer as T; M.from_pretrained('{name}')"
            f".save_pretrained('ckpt'); T.from_pretrained('{name}').save_pretrained('ckpt')\"`, copy `ckpt/` "
            "here and pass --base-model ckpt; or train offline with --base-model scratch:nano.",
        ) from None


def build_model(
    source: ModelSource,
    num_labels: int,
    corpus: list[str],
    max_seq_len: int,
    vocab_size: int = 8000,
    dropout: float = 0.1,
    attention_dropout: float = 0.0,
):
    """-> (paddle model, ErnieTokenizerFast). Imports paddle."""
    from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification

    if source.kind == "scratch":
        vocab = build_vocab(corpus, vocab_size=vocab_size)
        tokenizer = ErnieTokenizerFast(vocab, max_seq_len=max_seq_len)
        config = ErnieConfig(
            **_ERNIE3_COMMON,
            **SCRATCH_PRESETS[source.name],
            vocab_size=len(vocab),
            num_labels=num_labels,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=attention_dropout,
        )
        log.info("scratch:%s ERNIE 3.0 with a corpus vocabulary of %d tokens", source.name, len(vocab))
        return ErnieForSequenceClassification(config), tokenizer

    if source.kind == "hub":
        ensure_hub_reachable(source.name)
        from paddlenlp.transformers import ErnieTokenizer

        cache = Path.home() / ".cache" / "ernie-cls" / source.name
        ErnieTokenizer.from_pretrained(source.name).save_pretrained(str(cache))
        tokenizer = ErnieTokenizerFast.load(cache, max_seq_len=max_seq_len)
        model = ErnieForSequenceClassification.from_pretrained(source.name, num_labels=num_labels)
        return model, tokenizer

    directory = Path(source.name)
    if not any((directory / f).is_file() for f in ("config.json", "model_config.json")):
        raise ModelLoadError(
            f"{directory} holds no model config (config.json).",
            "Pass a directory written by `ernie-cls train` or by paddlenlp's save_pretrained().",
        )
    tokenizer = ErnieTokenizerFast.load(directory, max_seq_len=max_seq_len)
    model = ErnieForSequenceClassification.from_pretrained(
        str(directory),
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=attention_dropout,
    )
    for key in BRANCH_CONFIG_KEYS:  # the base's branch is not loaded: its keys must not follow
        if hasattr(model.config, key):
            delattr(model.config, key)
    return model, tokenizer


def classifier_class(config: dict):
    """The model class a saved config.json describes: ERNIE with the n-gram branch (training/ngram_model.py) or
    plain paddlenlp ERNIE."""
    if "ngram_weight" in config:
        from training.ngram_model import ErnieWithNgrams

        return ErnieWithNgrams
    from paddlenlp.transformers import ErnieForSequenceClassification

    return ErnieForSequenceClassification


def load_checkpoint(directory: str | Path):
    """A trained checkpoint for inference -> (model in eval mode, tokenizer, label map)."""
    d = Path(directory)
    if not d.is_dir():
        raise ModelLoadError(f"Checkpoint {d} does not exist.", "Pass the `best/` directory written by train.")
    label_file = d / "label_map.json"
    if not label_file.is_file():
        raise ModelLoadError(
            f"{d} has no label_map.json, so predictions cannot be named.",
            "Pass a checkpoint written by `ernie-cls train` (its best/ directory).",
        )
    tokenizer = ErnieTokenizerFast.load(d)
    config_file = d / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    model = classifier_class(config).from_pretrained(str(d))
    if hasattr(model, "ngram_table") and not model.ngram_table.numpy().any():  # paddlenlp only warns on a missing key
        raise ModelLoadError(
            f"{d}'s config describes an n-gram branch but its weights hold no n-gram table.",
            "Pass a checkpoint written whole by `ernie-cls train`, or retrain it.",
        )
    model.eval()
    return model, tokenizer, LabelMap.load(label_file)
