"""`classifier:DIR`: a local Hugging Face sequence classifier as the reward (e.g. distilbert-imdb).

The policy's text is decoded and re-encoded with the classifier's own tokenizer, scored in batches without gradients.
The score is the softmax probability (`output=prob`, default) or the raw logit (`output=logit`) of one label (a label
name from the config's `id2label`, or an index; default: the last label, the "positive" one for binary sentiment).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf_interp.errors import UserError


class ClassifierReward:
    def __init__(self, path: str, label: str = "", output: str = "prob", batch_size: int = 64) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = Path(path)
        if not directory.is_dir():
            raise UserError(f"reward 'classifier:{path}': directory not found (a local HF sequence classifier)")
        if not any(directory.glob("*.safetensors")):
            raise UserError(f"reward 'classifier:{path}': no *.safetensors weights (pickled weights are never loaded)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                directory, use_safetensors=True, trust_remote_code=False
            ).eval()
        except (OSError, ValueError) as e:
            raise UserError(f"reward 'classifier:{path}': cannot load ({type(e).__name__}: {e})") from e
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.label_index = self._label_index(label, path)
        if output not in ("prob", "logit"):
            raise UserError(f"reward 'classifier:{path}': output must be 'prob' or 'logit', got {output!r}")
        self.output = output
        self.batch_size = batch_size

    def _label_index(self, label: str, path: str) -> int:
        n = self.model.config.num_labels
        if label == "":
            return n - 1
        if label.isdigit() and int(label) < n:
            return int(label)
        names = {str(v).lower(): int(k) for k, v in (self.model.config.id2label or {}).items()}
        if label.lower() in names:
            return names[label.lower()]
        raise UserError(f"reward 'classifier:{path}': no label {label!r}; labels are {sorted(names)} or 0..{n - 1}")

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[float]:
        scores: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], return_tensors="pt", padding=True, truncation=True)
            enc = {k: v.to(self.model.device) for k, v in enc.items()}
            logits = self.model(**enc).logits.float()  # (batch, labels)
            if self.output == "prob" and logits.shape[-1] > 1:
                values = logits.softmax(-1)[:, self.label_index]
            elif self.output == "prob":
                values = logits[:, 0].sigmoid()
            else:
                values = logits[:, self.label_index]
            scores += values.tolist()
        return scores
