"""The plug-in API of the self-training loop.

One training step is a `Step` record that flows through the plug-ins' hooks, in this order
(see docs/architecture.md):

    pseudo_labels(step)   teacher output on the weak target view -> step.pseudo_label / pseudo_weight
    mix(step)             the student's mixed batch -> step.mix_image / mix_label / mix_weight
    (loop)                student forward on source and on the mixed batch -> step.student_source / student_mix
    losses(step)          -> {name: scalar}; the loop sums and logs them
    (loop)                backward, optimizer step, EMA teacher update
    update(step)          method state: banks, prototypes, thresholds

A method keeps everything it learns in `state_dict()` (checkpointed, resumed exactly) and makes it equal on all
ranks in `sync_state()` under DDP. Extra trainable modules (projection heads) come from `modules()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn


@dataclass
class Step:
    """Everything one training step knows. Shapes: images (B, 3, H, W) in [0, 1], labels (B, H, W) int64."""

    iteration: int
    source_image: Tensor
    source_label: Tensor
    target_image: Tensor | None = None  # weak view of the target crop (the teacher sees this)
    generator: torch.Generator | None = None  # the step's random stream (CPU): augmentations, mask sampling
    student: nn.Module | None = None
    teacher: nn.Module | None = None
    teacher_target: dict[str, Tensor] = field(default_factory=dict)  # logits/probs (B,C,H,W), features (B,F,h,w)
    pseudo_label: Tensor | None = None  # (B, H, W) int64, ignore = 255
    pseudo_weight: Tensor | None = None  # (B, H, W) float, per-pixel loss weight
    pseudo_confidence: Tensor | None = None  # (B, H, W) max class probability behind each pseudo-label
    mix_image: Tensor | None = None  # (B, 3, H, W) what the student sees besides the source batch
    mix_label: Tensor | None = None  # (B, H, W)
    mix_weight: Tensor | None = None  # (B, H, W)
    mix_mask: Tensor | None = None  # (B, H, W) bool: True where mix_image comes from the source image
    mix_aligned: Tensor | None = None  # (B, H, W) bool: True where mix_image shows the weak target view's pixel at
    #                                    the same position (not a source pixel, not a pasted donor): where the
    #                                    teacher's output on target_image is a valid per-pixel target
    student_source: dict[str, Tensor] = field(default_factory=dict)  # logits (B,C,H,W) upsampled, features
    student_mix: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # what one plug-in leaves for the next (named by plug-in)
    metrics: dict[str, float] = field(default_factory=dict)  # scalars to log (not losses)
    amp: Callable[[], Any] = contextlib.nullcontext  # the loop's autocast context (bf16/fp16 on CUDA)

    def forward(self, model: nn.Module, image: Tensor) -> dict[str, Tensor]:
        """Run `model` as the loop does (under its autocast): float32 logits upsampled to the image, features.

        Under torch.no_grad() for the teacher; plug-ins' extra forward passes go through here.
        """
        from udaseg.models import upsample

        with self.amp():
            out = model(image)
        return {"logits": upsample(out["logits"].float(), image.shape[-2:]), "features": out["features"]}


class Method:
    """Base plug-in: every hook is a no-op, so a method writes only the hooks it needs."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type | None] = None  # dataclass of the method's options, defaults = the paper's values
    requires: ClassVar[tuple[str, ...]] = ()  # plug-ins that must run before this one (e.g. "self_training")

    def __init__(self, options: Any = None, num_classes: int = 19, feature_dim: int = 0, device: str = "cpu"):
        self.options = options
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.device = torch.device(device)

    # --- the step ---
    def pseudo_labels(self, step: Step) -> None:
        """Set or refine step.pseudo_label / pseudo_weight from step.teacher_target."""

    def mix(self, step: Step) -> None:
        """Set or alter step.mix_image / mix_label / mix_weight."""

    def losses(self, step: Step) -> dict[str, Tensor]:
        """Loss terms of this method (scalars), after the student ran on source and mix."""
        return {}

    def update(self, step: Step) -> None:
        """Update method state after the optimizer step (no gradients)."""

    # --- state ---
    def modules(self) -> dict[str, nn.Module]:
        """Extra trainable modules: optimised with the head learning rate and checkpointed."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Method state (tensors, numbers, lists, dicts): checkpointed, loadable with weights_only=True."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"method {self.name!r} has no state to load, got keys {sorted(state)}")

    def sync_state(self) -> None:
        """Make the method state identical on all DDP ranks (gather or all-reduce). No-op in one process."""

    @property
    def needs_target(self) -> bool:
        """Whether the loop runs the teacher on the target batch and the pseudo_labels and mix hooks."""
        return True

    @property
    def uses_target_images(self) -> bool:
        """Whether the loop loads target images at all (DiGA's warm-up borrows their style without the teacher)."""
        return self.needs_target


REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    if cls.name in REGISTRY:
        raise ValueError(f"method name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def resolve_names(spec: str) -> list[str]:
    """'dida+cpsl' -> ['self_training', 'dida', 'cpsl']: requirements first, each name once, order kept."""
    names: list[str] = []

    def add(name: str) -> None:
        if name not in REGISTRY:
            raise ValueError(f"unknown method {name!r} in {spec!r}; available: {', '.join(sorted(REGISTRY))}")
        for req in REGISTRY[name].requires:
            add(req)
        if name not in names:
            names.append(name)

    for part in spec.split("+"):
        add(part.strip())
    if "source_only" in names and len(names) > 1:
        raise ValueError(f"{spec!r}: source_only cannot be combined with adaptation methods")
    return names


def build_methods(spec: str, options: dict[str, dict], num_classes: int, feature_dim: int, device) -> list[Method]:
    """Instantiate the plug-ins of `spec`, each with its options from the config's `methods.<name>` section."""
    from udaseg.config import method_options

    unknown = set(options) - set(REGISTRY)
    if unknown:
        raise ValueError(f"config methods.{sorted(unknown)[0]}: no such method; available: {sorted(REGISTRY)}")
    methods = []
    for name in resolve_names(spec):
        cls = REGISTRY[name]
        opts = method_options(cls.Options, options.get(name, {}), name) if cls.Options else None
        methods.append(cls(opts, num_classes=num_classes, feature_dim=feature_dim, device=device))
    return methods


def resolved_options(methods: list[Method]) -> dict[str, dict]:
    """Options of each plug-in with defaults filled in: written to config.yaml and checkpoints."""
    import dataclasses

    return {m.name: dataclasses.asdict(m.options) for m in methods if m.options is not None}
