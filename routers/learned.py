"""The learned router: predict the attributes from the image, gate the experts from the guess.

Attribute heads read the CLS token at the input of the first expert block (`MoSAICReID`
captures it with a pre-hook), so no annotation is needed at test time. The heads are one
linear map per attribute group, stored as ONE ``Linear(width, n_slots)`` whose output slots
are the groups' values side by side: the same model as a linear per group, computed in one
matrix product. A normalisation first, because the intermediate residual stream is not
normalised: ``norm="layer"`` (default, the MoSAIC-ReID design) a LayerNorm over the token's
channels; ``norm="batch"`` a BatchNorm1d, which standardises every channel across images
(running statistics at evaluation). Use ``batch`` when the token is mostly the same vector for
every image, as in a randomly initialised ViT trained from scratch, whose CLS token at that
depth keeps only a few percent of per-image variation: a LayerNorm normalises each token on its
own and keeps that shared offset, so the heads see a near-constant input and learn the priors
only, while a BatchNorm removes the offset and scales the per-image part to unit variance.

Training (`LearnedRouter.loss`): cross-entropy per group over its values, for every kind
(a ``single`` group is the two-way choice absent/present, a ``dual`` group its two states, a
``multiclass`` group its classes). Samples with no value marked for a group (missing) are
ignored for that group; samples with several values marked (``multiple = "all"`` colour
groups) are ignored too, because a single-choice head has no one right answer for them.

Gates: ``hard`` = per group the argmax value's one-hot (exactly one value per group; a single
group's expert is on only when "present" wins), ``soft`` = per group the softmax
probabilities (every expert is then non-zero, so the bank's ``mean`` pooling divides by the
number of experts). With ``teacher_forcing`` (default) a model in training mode that is given
annotations gates from the ground truth, as the oracle does, so the experts learn their
attribute while the heads learn to predict it; at evaluation, or without annotations, the
prediction gates.

Two training options a user tries when the learned router keeps little of the oracle's gain:

- scheduled sampling (``predicted_gates_p``, set from ``train.predicted_gates_p`` by the
  training loop): under teacher forcing, each sample's gates come from the router's own
  prediction with this probability, so the experts also train on the gates they will get at
  test time. 0 (default) draws nothing, so the run is exactly teacher forcing;
- ``detach``: the heads read a detached copy of the CLS token, so the attribute loss trains the
  heads only and cannot bend the backbone's features towards attribute prediction (nor can a
  soft gate's gradient). The heads then read whatever the ReID losses make of the token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attrimp.errors import ConfigError
from attrimp.model.interfaces import Router
from attrimp.model.schema import AttributeSchema, GroupKind

GATE_MODES = ("hard", "soft")
#: the normalisation before the heads: per token (LayerNorm) or per channel across images
NORM_MODES = ("layer", "batch")
_PAD = -1e9  # logit of a padding slot: exp() underflows to exactly 0 in float32


def _group_layout(schema: AttributeSchema) -> tuple[torch.Tensor, torch.Tensor]:
    """``index [G, V]`` (slot of value v of group g, ``n_slots`` = padding) and ``unpad [n_slots]``.

    Every per-group operation (softmax, argmax, cross-entropy) runs on the padded ``[B, G, V]``
    tensor at once, no loop over groups; ``padded.flatten(1)[:, unpad]`` gives the slots back in
    schema order (an index, not a boolean mask, so it traces without a data-dependent shape).
    """
    width = max(len(g.values) for g in schema.groups)
    index = torch.full((schema.n_groups, width), schema.n_slots, dtype=torch.long)
    for gi, g in enumerate(schema.groups):
        slots = schema.group_slots(g.name)
        index[gi, : len(slots)] = torch.tensor(slots)
    unpad = torch.nonzero(index.flatten() < schema.n_slots).flatten()
    return index, unpad


def _unpadded(padded: torch.Tensor, unpad: torch.Tensor) -> torch.Tensor:
    return padded.flatten(1).index_select(1, unpad)


def _padded(x: torch.Tensor, index: torch.Tensor, fill: float) -> torch.Tensor:
    """``[B, n_slots]`` -> ``[B, G, V]`` with ``fill`` in the padding."""
    ext = torch.cat([x, x.new_full((x.shape[0], 1), fill)], dim=1)
    return ext[:, index]


class LearnedRouter(nn.Module, Router):
    """Attribute heads on an intermediate CLS token; gates from their prediction."""

    name = "learned"

    @dataclass
    class Options:
        """No ``[router.options]``: the learned router's settings are the ``[router]`` keys
        (``gates``, ``norm``, ``detach``, ``attribute_loss_weight``), as before options existed."""

    #: tells `MoSAICReID` to hand over the intermediate CLS token
    needs_features = True

    def __init__(
        self,
        schema: AttributeSchema,
        width: int,
        *,
        gates: str = "hard",
        teacher_forcing: bool = True,
        dropout: float = 0.0,
        norm: str = "layer",
        detach: bool = False,
        predicted_gates_p: float = 0.0,
    ) -> None:
        nn.Module.__init__(self)
        if gates not in GATE_MODES:
            raise ConfigError(f"Learned router: gates {gates!r} is not one of {list(GATE_MODES)}.")
        if norm not in NORM_MODES:
            raise ConfigError(f"Learned router: norm {norm!r} is not one of {list(NORM_MODES)}.")
        self.schema = schema
        self.gate_mode = gates
        self.teacher_forcing = teacher_forcing
        self.detach = bool(detach)
        if not 0.0 <= float(predicted_gates_p) <= 1.0:
            raise ConfigError(
                f"Learned router: predicted_gates_p must lie in [0, 1], not {predicted_gates_p!r}."
            )
        #: scheduled sampling: the probability that a training sample is gated from the
        #: prediction (see the module docstring); a plain float, read only in training mode
        self.predicted_gates_p = float(predicted_gates_p)
        self.norm = nn.LayerNorm(width) if norm == "layer" else nn.BatchNorm1d(width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.heads = nn.Linear(width, schema.n_slots)
        index, unpad = _group_layout(schema)
        self.register_buffer("group_index", index, persistent=False)
        self.register_buffer("unpad_index", unpad, persistent=False)
        self.register_buffer("expert_slots", torch.tensor(schema.expert_slots), persistent=False)

    # ---------------------------------------------------------------- prediction
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """CLS token ``[B, width]`` -> attribute logits ``[B, n_slots]`` (float32).

        The norm runs in float32 (autocast does so for a LayerNorm anyway; a BatchNorm's running
        statistics stay float32 that way under bf16 autocast). With ``detach`` the token is cut
        from the graph first: no gradient from the heads reaches the backbone."""
        if self.detach:
            features = features.detach()
        return self.heads(self.dropout(self.norm(features.float()))).float()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-group softmax of the logits, ``[B, n_slots]``."""
        p = torch.softmax(_padded(logits.float(), self.group_index, _PAD), dim=-1)
        return _unpadded(p, self.unpad_index)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-group argmax as a multi-hot ``[B, n_slots]`` (exactly one value per group)."""
        padded = _padded(logits.float(), self.group_index, _PAD)
        onehot = F.one_hot(padded.argmax(dim=-1), padded.shape[-1]).to(torch.float32)
        return _unpadded(onehot, self.unpad_index)

    def gates_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        slots = self.predict(logits) if self.gate_mode == "hard" else self.probabilities(logits)
        return slots.index_select(1, self.expert_slots)

    # ---------------------------------------------------------------- the Router contract
    def route_with_logits(
        self,
        attributes: torch.Tensor | None,
        schema: AttributeSchema,
        *,
        features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gates [B, n_experts], attribute logits [B, n_slots])`` for the CLS ``features``."""
        self._check_schema(schema)
        logits = self(features)
        if self.training and self.teacher_forcing and attributes is not None:
            gates = attributes.to(logits.device, torch.float32).index_select(1, self.expert_slots)
            if self.predicted_gates_p > 0:  # scheduled sampling; at 0 nothing is drawn
                # the global torch RNG: seeded by the training loop and restored on resume
                use = torch.rand(gates.shape[0], 1, device=gates.device) < self.predicted_gates_p
                gates = torch.where(use, self.gates_from_logits(logits.detach()), gates)
        else:
            gates = self.gates_from_logits(logits)
        return gates, logits

    def route(
        self,
        attributes: torch.Tensor | None,
        schema: AttributeSchema,
        *,
        features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if features is None:
            raise ConfigError(
                "The learned router predicts attributes from the image and needs the CLS token "
                "(features=); run it inside MoSAICReID, which hands it over."
            )
        return self.route_with_logits(attributes, schema, features=features)[0]

    def _check_schema(self, schema: AttributeSchema) -> None:
        if schema.n_slots != self.schema.n_slots or schema.group_names != self.schema.group_names:
            raise ConfigError(
                f"The learned router was built for schema {self.schema.name!r} "
                f"({self.schema.n_slots} slots) but is asked to route schema {schema.name!r} "
                f"({schema.n_slots} slots)."
            )

    # ---------------------------------------------------------------- training
    def loss(self, logits: torch.Tensor, attributes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the (sample, group) pairs with exactly one value marked."""
        padded = _padded(logits.float(), self.group_index, _PAD)  # [B, G, V]
        truth = _padded(attributes.to(padded.device, torch.float32), self.group_index, 0.0)
        single = truth.sum(dim=-1) == 1  # [B, G]; missing (0) and multiple (>1) are ignored
        ce = F.cross_entropy(padded.flatten(0, 1), truth.argmax(-1).flatten(), reduction="none")
        weight = single.flatten().to(ce.dtype)
        return (ce * weight).sum() / weight.sum().clamp(min=1.0)


def attribute_accuracy(
    pred: torch.Tensor | np.ndarray,
    multihot: torch.Tensor | np.ndarray,
    schema: AttributeSchema,
) -> dict[str, object]:
    """How well predicted attributes match the annotations.

    ``pred`` is attribute logits or scores ``[n, n_slots]`` (or a predicted multi-hot): the
    per-group argmax is the prediction. Returns

    - ``group_accuracy``: per group, the share of samples with exactly one value marked whose
      predicted value is that value (missing / multiply-marked samples are left out);
    - ``balanced_accuracy``: per *binary attribute*, ``(TPR + TNR) / 2``. The binary attributes
      are the pedestrian-attribute convention: one per ``single``/``dual`` group (positive = its
      second value, e.g. ``gender=female``, ``hat=yes``) and one per value of a ``multiclass``
      group (one-vs-rest, e.g. ``age=teenager``, ``upcolor=black``) — 30 for Market-1501.
      Samples with no value marked for the group are left out; an attribute with no positive
      or no negative sample has no balanced accuracy (NaN) and is left out of the mean;
    - ``mA``: the mean of ``balanced_accuracy`` (the standard mean accuracy of pedestrian
      attribute recognition), and ``mean_group_accuracy``.
    """
    scores = torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred).float().cpu()
    truth = torch.as_tensor(np.asarray(multihot) if not torch.is_tensor(multihot) else multihot)
    truth = (truth.float().cpu() > 0).float()
    if scores.shape != truth.shape or scores.shape[-1] != schema.n_slots:
        raise ConfigError(
            f"attribute_accuracy needs predictions and annotations of shape [n, {schema.n_slots}], "
            f"got {list(scores.shape)} and {list(truth.shape)}."
        )
    index, unpad = _group_layout(schema)
    guess = _unpadded(
        F.one_hot(_padded(scores, index, _PAD).argmax(-1), index.shape[1]).float(), unpad
    )

    group_acc: dict[str, float] = {}
    balanced: dict[str, float] = {}
    for g in schema.groups:
        slots = schema.group_slots(g.name)
        t, p = truth[:, slots], guess[:, slots]
        marked = t.sum(1)
        one = marked == 1
        group_acc[g.name] = float((t[one] * p[one]).sum(1).mean()) if one.any() else float("nan")
        known = marked > 0
        binary = [1] if g.kind in (GroupKind.SINGLE, GroupKind.DUAL) else range(len(g.values))
        for v in binary:
            name = f"{g.name}={g.values[v]}"
            tv, pv = t[known, v] > 0, p[known, v] > 0
            pos, neg = int(tv.sum()), int((~tv).sum())
            if pos == 0 or neg == 0:
                balanced[name] = float("nan")
                continue
            tpr = float((pv & tv).sum()) / pos
            tnr = float((~pv & ~tv).sum()) / neg
            balanced[name] = (tpr + tnr) / 2
    finite = [v for v in balanced.values() if v == v]
    groups_finite = [v for v in group_acc.values() if v == v]
    return {
        "group_accuracy": group_acc,
        "balanced_accuracy": balanced,
        "mA": float(np.mean(finite)) if finite else float("nan"),
        "mean_group_accuracy": float(np.mean(groups_finite)) if groups_finite else float("nan"),
    }


def group_accuracy(
    pred: torch.Tensor | np.ndarray,
    multihot: torch.Tensor | np.ndarray,
    schema: AttributeSchema,
) -> dict[str, object]:
    """Per attribute group: accuracy beside what a constant guess would score.

    Why: an accuracy of 0.73 means nothing on its own when 71 % of the test images carry the
    majority value; a router that always guesses it scores that. Over the samples with exactly
    one value marked for the group (as ``attribute_accuracy``'s ``group_accuracy``):

    - ``accuracy``: share predicted right; ``error_rate`` = 1 - accuracy (what the
      matched-noise oracle corrupts each group at);
    - ``majority_rate``: share of the most frequent true value (``majority_value``), the
      accuracy of always guessing it;
    - ``balanced_accuracy``: the mean recall over the values present in the truth
      (scikit-learn's ``balanced_accuracy_score``); a constant guess scores 1 / (values seen);
    - ``n``: samples counted. A group nobody is annotated for has NaN and is left out of the
      means ``mean_accuracy``, ``mean_majority_rate`` and ``mean_balanced_accuracy``.
    """
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    scores = torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred).float().cpu()
    truth = torch.as_tensor(np.asarray(multihot) if not torch.is_tensor(multihot) else multihot)
    truth = (truth.float().cpu() > 0).float()
    if scores.shape != truth.shape or scores.shape[-1] != schema.n_slots:
        raise ConfigError(
            f"group_accuracy needs predictions and annotations of shape [n, {schema.n_slots}], "
            f"got {list(scores.shape)} and {list(truth.shape)}."
        )
    out: dict[str, dict[str, object]] = {
        k: {} for k in ("accuracy", "error_rate", "majority_rate", "majority_value")
    }
    out["balanced_accuracy"], out["n"] = {}, {}
    for g in schema.groups:
        slots = schema.group_slots(g.name)
        t, s = truth[:, slots], scores[:, slots]
        one = t.sum(1) == 1
        y, p = t[one].argmax(1).numpy(), s[one].argmax(1).numpy()
        out["n"][g.name] = int(one.sum())
        if not len(y):
            for k in ("accuracy", "error_rate", "majority_rate", "balanced_accuracy"):
                out[k][g.name] = float("nan")
            out["majority_value"][g.name] = None
            continue
        counts = np.bincount(y, minlength=len(slots))
        out["accuracy"][g.name] = float(np.mean(y == p))
        out["error_rate"][g.name] = 1.0 - out["accuracy"][g.name]
        out["majority_rate"][g.name] = float(counts.max() / len(y))
        out["majority_value"][g.name] = g.values[int(counts.argmax())]
        with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected
            warnings.simplefilter("ignore")
            out["balanced_accuracy"][g.name] = float(balanced_accuracy_score(y, p))
    for k in ("accuracy", "majority_rate", "balanced_accuracy"):
        finite = [v for v in out[k].values() if v == v]
        out[f"mean_{k}"] = float(np.mean(finite)) if finite else float("nan")
    return out
