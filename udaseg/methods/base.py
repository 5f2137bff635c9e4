"""The plug-in API of the self-training loop.

One training step is a `Step` record that flows through the plug-ins' hooks, in this order
(see docs/architecture.md):

    (loop)                teacher on the weak target view -> step.teacher_target
    pseudo_labels(step)   -> step.pseudo_label / pseudo_weight / pseudo_confidence / class_probs
    mix(step)             the student's mixed batch -> step.mix_image / mix_label / mix_weight / mix_aligned
    (loop)                student forward on source and on the mixed batch -> step.student_source / student_mix
    losses(step)          -> {term: scalar}; the loop sums them and logs each as "<plug-in>/<term>"
    (loop)                backward, optimizer step, EMA teacher update
    update(step)          method state: banks, prototypes, thresholds

A method keeps everything it learns in `state_dict()` (checkpointed, resumed exactly) and makes it equal on all
ranks in `sync_state()` under DDP. Extra trainable modules (projection heads) come from `modules()`.
A new method is one file: a `Method` subclass with `@register_method`, imported in `udaseg/methods/__init__.py`
(docs/architecture.md, "Adding a method").
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
    """Everything one training step knows. Shapes: images (B, 3, H, W) in [0, 1], labels (B, H, W) int64.

    The fields are the plug-ins' shared vocabulary: a plug-in reads any of them and writes those its hook sets
    (the hook order is in the module docstring). What one plug-in carries between its own hooks within a step goes
    in `Method.scratch(step)`, private to it: plug-ins never talk through it.
    """

    iteration: int
    source_image: Tensor
    source_label: Tensor
    target_image: Tensor | None = None  # weak view of the target crop (the teacher sees this)
    generator: torch.Generator | None = None  # the step's random stream (CPU): augmentations, mask sampling
    student: nn.Module | None = None
    teacher: nn.Module | None = None
    teacher_target: dict[str, Tensor] = field(default_factory=dict)  # logits/probs (B,C,H,W), features (B,F,h,w)
    # --- pseudo-labels: set by self_training, refined by later plug-ins in the pseudo_labels hook ---
    pseudo_label: Tensor | None = None  # (B, H, W) int64, ignore = 255
    pseudo_weight: Tensor | None = None  # (B, H, W) float, per-pixel loss weight
    pseudo_confidence: Tensor | None = None  # (B, H, W) max class probability behind each pseudo-label
    class_probs: Tensor | None = None  # (B, C, H, W) the class probabilities behind pseudo_label: the teacher's
    #                                    softmax (self_training), replaced by a plug-in that relabels from its own
    #                                    distribution (DIDA's fused P', CPSL's rectified w * p); the next plug-in
    #                                    refines this one
    # --- the student's mixed batch: set by self_training, altered by later plug-ins in the mix hook ---
    mix_image: Tensor | None = None  # (B, 3, H, W) what the student sees besides the source batch
    mix_label: Tensor | None = None  # (B, H, W)
    mix_weight: Tensor | None = None  # (B, H, W)
    mix_mask: Tensor | None = None  # (B, H, W) bool: True where mix_image comes from the source image
    mix_aligned: Tensor | None = None  # (B, H, W) bool: True where mix_image shows the weak target view's pixel at
    #                                    the same position (not a source pixel, not a pasted donor): where the
    #                                    teacher's output on target_image is a valid per-pixel target
    # --- set by the loop ---
    student_source: dict[str, Tensor] = field(default_factory=dict)  # logits (B,C,H,W) upsampled, features, encoder
    student_mix: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # scalars to log (not losses), named "<plug-in>/<what>"
    amp: Callable[[], Any] = contextlib.nullcontext  # the loop's autocast context (bf16/fp16 on CUDA)
    compute_dtype: torch.dtype = torch.float32  # dtype plug-ins hand the udaseg.kernels ops (embeddings, banks,
    #                                             queues, class probabilities): the autocast dtype on CUDA with
    #                                             train.amp (tensor cores; the kernels accumulate in float32),
    #                                             float32 otherwise. Method state stays float32.
    scratch: dict[str, dict[str, Any]] = field(default_factory=dict)  # per plug-in, see Method.scratch

    def forward(self, model: nn.Module, image: Tensor, norm_stats: bool = True) -> dict[str, Tensor]:
        """Run `model` as the loop does (under its autocast): float32 logits upsampled to the image, features.

        Under torch.no_grad() for the teacher; plug-ins' extra forward passes go through here. `norm_stats=False`:
        BatchNorm's running statistics are left as they were (for images unlike the data, e.g. MIC's masked ones).
        """
        from udaseg.models import upsample
        from udaseg.models.common import keep_norm_statistics

        keep = contextlib.nullcontext() if norm_stats else keep_norm_statistics(model)
        with keep, self.amp():
            out = model(image)
        extra = {"encoder": out["encoder"]} if "encoder" in out else {}  # ImageNet feature distance's input
        return {"logits": upsample(out["logits"].float(), image.shape[-2:]), "features": out["features"], **extra}


class Method:
    """Base plug-in: every hook is a no-op, so a method writes only the hooks it needs."""

    name: ClassVar[str] = "base"
    Options: ClassVar[type | None] = None  # dataclass of the method's options, defaults = the paper's values
    requires: ClassVar[tuple[str, ...]] = ()  # plug-ins that must run before this one (e.g. "self_training")
    warmup: ClassVar[bool] = False  # a warm-up stage plug-in (`--warmup <alias>`, source data only)
    warmup_alias: ClassVar[str] = ""  # the --warmup value that selects it, when not its name (diga_warmup: diga)

    def __init__(self, options: Any = None, num_classes: int = 19, feature_dim: int = 0, device: str = "cpu"):
        self.options = options
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.device = torch.device(device)

    def scratch(self, step: Step) -> dict[str, Any]:
        """This plug-in's private per-step data (what its pseudo_labels hook leaves for its losses and update).

        Lives and dies with the step; no other plug-in reads it (shared data are typed Step fields).
        """
        return step.scratch.setdefault(self.name, {})

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


def warmups() -> dict[str, str]:
    """{--warmup value: registered plug-in name} of every plug-in that declares itself a warm-up."""
    return {(cls.warmup_alias or name): name for name, cls in REGISTRY.items() if cls.warmup}


def resolve_warmup(name: str) -> str:
    """The registered plug-in a `--warmup` value names: 'source_only' -> 'source_only', 'diga' -> 'diga_warmup'.

    The registered name itself is accepted too. Raises ConfigError naming the valid warm-ups for anything else.
    """
    from udaseg.config import ConfigError

    table = warmups()
    if name in table:
        return table[name]
    if name in table.values():
        return name
    raise ConfigError(
        f"train.warmup={name!r} is not a warm-up; valid: {', '.join(sorted(table))} "
        f"(adaptation methods go in train.method / --method)"
    )


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
