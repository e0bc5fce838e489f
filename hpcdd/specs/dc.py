"""DC: Dataset Condensation with Gradient Matching (Zhao, Mopuri & Bilen, ICLR 2021), and DSA:
the same with Differentiable Siamese Augmentation (Zhao & Bilen, ICML 2021).

Both share one implementation (:mod:`hpcdd.distill.dc`); ``dc`` always resolves with
``dsa: false``, ``dsa`` with ``dsa: true``. Defaults follow the official code
(VICO-UoE/DatasetCondensation, main.py/utils.py): 1000 iterations, image SGD lr 0.1 with
momentum 0.5, net SGD lr 0.01 without momentum, inner batch 256, the layer-wise distance 'ours',
and the outer/inner loop counts of ``get_loops(ipc)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcdd.config import RunConfig
from hpcdd.errors import ConfigError
from hpcdd.specs.base import MethodSpec, register_method
from hpcdd.specs.images import ImageParams

LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10),
}
"""ipc -> (outer_loop, inner_loop) of the official ``get_loops``."""
DIS_METRICS = ("ours", "mse", "cos")


@dataclass(frozen=True)
class DCParams(ImageParams):
    """DC/DSA's knobs; defaults from the official code."""

    lr_img: float = 0.1
    """Learning rate of the synthetic images (SGD); DC/DSA: 0.1."""
    init: str = "real"
    """Initial images: real (random real images, the DSA readme's --init real), noise (standard
    normal, the DC argparse default), kmeans (the real images nearest per-class k-means centroids)."""
    outer_loop: int | None = None
    """Image updates per iteration, each on a freshly matched gradient (null: the official table
    by ipc: 1->1, 10->10, 20->20, 30->30, 40->40, 50->50)."""
    inner_loop: int | None = None
    """Epochs of training the net on the synthetic set between image updates (null: the official
    table by ipc: 1->1, 10->50, 20->25, 30->20, 40->15, 50->10)."""
    lr_net: float = 0.01
    """Learning rate of the net's SGD in the inner loop."""
    momentum_net: float = 0.0
    """SGD momentum of the net in the inner loop (official DSA-era code: none; the first DC code: 0.5)."""
    batch_train: int = 256
    """Batch size of the inner loop's training on the synthetic set."""
    dis_metric: str = "ours"
    """Gradient distance: ours (sum over layers and output rows of 1 - cosine, 1-d parameters
    skipped), mse (squared distance of all gradients), cos (1 - cosine of all gradients)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("outer_loop", "inner_loop"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 or null (the official table by ipc), got {value}")
        if self.lr_net <= 0:
            raise ConfigError(f"lr_net must be > 0, got {self.lr_net}")
        if not 0 <= self.momentum_net < 1:
            raise ConfigError(f"momentum_net must be in [0, 1), got {self.momentum_net}")
        if self.batch_train < 1:
            raise ConfigError(f"batch_train must be >= 1, got {self.batch_train}")
        if self.dis_metric not in DIS_METRICS:
            raise ConfigError(f"dis_metric must be one of {', '.join(DIS_METRICS)}, got {self.dis_metric!r}")


def loops(ipc: int, outer_loop: int | None = None, inner_loop: int | None = None) -> tuple[int, int]:
    """(outer_loop, inner_loop): the given values, else the official table's for ``ipc``."""
    if outer_loop is not None and inner_loop is not None:
        return outer_loop, inner_loop
    if ipc not in LOOPS:
        raise ConfigError(f"DC/DSA loop counts are defined for ipc {', '.join(map(str, LOOPS))} only "
                          f"(got ipc {ipc}); give both outer_loop and inner_loop")
    table = LOOPS[ipc]
    return (table[0] if outer_loop is None else outer_loop, table[1] if inner_loop is None else inner_loop)


def check(cfg: RunConfig) -> None:
    """Refuse an ipc outside the official loop table unless both loop counts are given."""
    params = cfg.params
    loops(int(cfg.ipc or 0), params.get("outer_loop"), params.get("inner_loop"))


for _name, _dsa, _summary in (
    ("dc", False, "Gradient matching: per-class layer-wise cosine distance of a fresh ConvNet's "
                  "gradients, the net trained on the synthetic set in between"),
    ("dsa", True, "DC with differentiable siamese augmentation of the real and synthetic batches"),
):
    register_method(MethodSpec(
        name=_name, impl="hpcdd.distill.dc:DC", params=DCParams, summary=_summary,
        defaults={"iterations": 1000}, fixed={"dsa": _dsa}, check=check,
    ))

__all__ = ["DCParams", "LOOPS", "DIS_METRICS", "loops", "check"]
