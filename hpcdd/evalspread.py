"""An evaluation's models spread over the job's processes.

One process trains them all (:func:`hpcdd.evaluate.evaluate_source`, unchanged). With several,
the models still to train ((architecture, k) pairs) are dealt round-robin to the ranks; each rank
trains its share through the same :func:`hpcdd.evaluate.train_models` seam (as an ensemble where
that is on), so model ``(arch, k)`` gets the init, data order, augmentation and images it gets in
one process and the same accuracy. The accuracies are then gathered on every rank and handed to
``on_model`` (whose writer saves them on rank 0 only).

Preemption: a rank whose ``should_stop`` turns true stops its current model (``Interrupted``);
what every rank finished before that is still gathered and saved, then every rank raises
``Interrupted``, so the next start trains only the missing models. A dead rank makes the gather
fail on the others (``PeerLost``, one line) after the process group's timeout at most.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from hpcdd.evaluate import evaluate_source, train_models
from hpcdd.runtime.dist import Dist, shard_of
from hpcdd.runtime.preempt import Interrupted


def evaluate_spread(source: Any, test: Any, info: Any, ev: Any, *, dist: Dist,
                    finished: Mapping[tuple[str, int], float] | None = None,
                    on_model: Callable[[str, int, float], None] | None = None,
                    should_stop: Callable[[], bool] | None = None, **kw: Any) -> dict[str, dict[str, Any]]:
    """:func:`hpcdd.evaluate.evaluate_source`, with the models spread over ``dist``'s ranks."""
    if not dist.several:
        return evaluate_source(source, test, info, ev, finished=finished, on_model=on_model,
                               should_stop=should_stop, **kw)
    done = dict(finished or {})
    todo = [(arch, k) for arch in ev.models for k in range(ev.n) if (arch, k) not in done]
    mine: dict[tuple[str, int], float] = {}
    stopped = False
    try:
        train_models(source, test, info, ev, shard_of(dist, todo), should_stop=should_stop,
                     on_model=lambda arch, k, acc: mine.__setitem__((arch, k), acc), **kw)
    except Interrupted:
        stopped = True
    shared = dist.gather((mine, stopped))
    for accs, _ in shared:
        for (arch, k), acc in sorted(accs.items()):
            done[(arch, k)] = acc
            if on_model is not None:
                on_model(arch, k, acc)
    if any(s for _, s in shared):
        raise Interrupted(None)
    return evaluate_source(source, test, info, ev, finished=done, **kw)


__all__ = ["evaluate_spread"]
