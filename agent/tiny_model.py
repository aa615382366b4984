"""`python -m agent.tiny_model DIR`: writes a tiny Llama that real vLLM serves without a download.

The folder holds what vLLM reads: a `config.json` (LlamaForCausalLM: hidden 256, 4 attention
heads, 2 KV heads, 2 layers, head_dim 64 — vLLM's CPU attention kernels refuse head_dim 16) and a
byte-level BPE tokenizer trained here on a fixed word list, with a chat template. There are no
weights: serve it with `--load-format dummy` (random weights), which is all a test of the
engine's API, metrics and lifecycle needs. Common English words, and `word`, are one token each,
as in the simulator's tokenizer, so the same prompt is about the same length in both.

Needs the `tokenizers` library (vLLM's environment has it); the output is the same on every run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MAX_MODEL_LEN = 1024
SPECIAL_TOKENS = ["<s>", "</s>", "<|start|>", "<|sep|>", "<|end|>"]
# The simulator's chat markers (agent/sim/tokenizer.py), so both count template tokens alike.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|start|>{{ message['role'] }}<|sep|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant<|sep|>{% endif %}"
)
_WORDS = (
    "the of and to in is it that for on was with as at by be this from or an are not but had "
    "his her they you we can all one has more no so were when said what up out if its who "
    "time way day man new some like then now into make them than been only two old see work "
    "may well also back use made over such good each just most very much need data fast node "
    "gpu load word hello hi there engine say once upon a story about what cache prompt model "
    "system user assistant helpful question answer test"
).split()


def config(vocab_size: int) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "num_hidden_layers": 2,
        "vocab_size": vocab_size,
        "max_position_embeddings": MAX_MODEL_LEN,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
    }


def write_tiny_model(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Each word alone and after a space, many times: each becomes a single token.
    corpus = [" ".join(_WORDS)] * 50 + [f"{w} {w} {w}" for w in _WORDS] * 20
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "model_max_length": MAX_MODEL_LEN,
        "chat_template": CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    (folder / "config.json").write_text(json.dumps(config(tokenizer.get_vocab_size()), indent=2))
    (folder / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 0, "eos_token_id": 1})
    )
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m agent.tiny_model DIR")
    print(write_tiny_model(Path(sys.argv[1])))
