"""The value head: a linear map from the final-LN residual stream to a scalar, zero-initialised.

# value head on the final residual stream, zero init: N implementation details #8 (lm-human-preferences uses a
# zero-initialised head so that the untrained critic predicts 0 and the first advantages are the rewards)
"""

from __future__ import annotations

from torch import Tensor, nn


class ValueHead(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.summary = nn.Linear(d_model, 1)
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """(batch, resp, d_model) final-LN residual stream -> (batch, resp) values."""
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def hidden_size(model: nn.Module) -> int:
    config = model.config
    for key in ("n_embd", "hidden_size", "d_model"):
        if isinstance(getattr(config, key, None), int):
            return int(getattr(config, key))
    raise ValueError("cannot tell the model's hidden size from its config")


def state_to_cpu(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def load_into(module: nn.Module, tensors: dict[str, Tensor]) -> None:
    module.load_state_dict({k: v.to(next(module.parameters()).device) for k, v in tensors.items()})

