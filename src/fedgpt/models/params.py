"""``ParamSpec``: the trainable parameters of a model as one flat tensor.

Every update that moves between clients and server is one flat float32 vector over the
*trainable* parameters (all weights, a top slice, or LoRA adapters). ``bind_flat``
re-points each trainable parameter (and its gradient) at a slice of one contiguous buffer,
so reading the weights, loading new global weights, clipping or adding a proximal term
are single tensor operations, never Python loops over parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and offsets of the trainable parameters, in ``named_parameters`` order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    numel: int

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ParamSpec:
        names, shapes, offsets, total = [], [], [], 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            names.append(name)
            shapes.append(tuple(p.shape))
            offsets.append(total)
            total += p.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), total)


@dataclass
class FlatModel:
    """A model whose trainable parameters and gradients live in two flat buffers."""

    model: torch.nn.Module
    spec: ParamSpec
    flat: torch.Tensor
    grad: torch.Tensor

    def params(self) -> list[torch.nn.Parameter]:
        named = dict(self.model.named_parameters())
        return [named[n] for n in self.spec.names]

    def load(self, weights: torch.Tensor) -> None:
        """Set the trainable weights from a flat vector (one copy)."""
        with torch.no_grad():
            self.flat.copy_(weights)

    def weights(self) -> torch.Tensor:
        """A host (CPU) copy of the trainable weights: what leaves the model's device."""
        return self.flat.detach().to("cpu", copy=True)

    def delta(self, start: torch.Tensor) -> torch.Tensor:
        """w − ``start`` (a host vector), computed on the model's device, returned on the
        host."""
        return (self.flat.detach() - start.to(self.flat.device)).cpu()

    def zero_grad(self) -> None:
        self.grad.zero_()

    def rebind_grads(self) -> None:
        """Point every ``.grad`` back at its slice of ``grad`` (after a library, e.g. a
        per-sample-gradient optimiser, replaced them)."""
        self.grad.zero_()
        for p, off, shape in zip(self.params(), self.spec.offsets, self.spec.shapes, strict=True):
            p.grad = self.grad[off : off + p.numel()].view(shape)


def bind_flat(model: torch.nn.Module) -> FlatModel:
    """Move the trainable parameters of ``model`` into one contiguous float32 buffer (on
    the model's device).

    Parameters keep their identity (optimisers and PEFT still see the same objects); their
    ``.data`` and ``.grad`` become views of ``flat`` and ``grad``. Autograd accumulates
    into an existing ``.grad`` in place, so gradients land in ``grad`` without copies.
    """
    spec = ParamSpec.from_model(model)
    dev = next(model.parameters()).device
    flat = torch.empty(spec.numel, dtype=torch.float32, device=dev)
    grad = torch.zeros(spec.numel, dtype=torch.float32, device=dev)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, shape, off in zip(spec.names, spec.shapes, spec.offsets, strict=True):
            p = named[name]
            n = p.numel()
            flat[off : off + n].copy_(p.detach().reshape(-1))
            p.data = flat[off : off + n].view(shape)
            p.grad = grad[off : off + n].view(shape)
    return FlatModel(model=model, spec=spec, flat=flat, grad=grad)
