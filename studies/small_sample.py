"""Small-sample cluster-robust inference for GLMs: CR2 and the HTZ Wald test.

The reference is Pustejovsky & Tipton (2018, *Journal of Business & Economic Statistics* 36(4),
"Small-sample methods for cluster-robust variance estimation and hypothesis testing in fixed
effects models") as implemented in R's clubSandwich (``vcovCR(type = "CR2")``,
``coef_test(test = "Satterthwaite")``, ``Wald_test(test = "HTZ")``). We write our own because no
Python library offers it, and because our GLMs are fitted on collapsed cells (see
``studies.glm``): every quantity below is computed exactly from cell sums.

How it works, in the notation of clubSandwich's GLM method (response residuals ``e = y - mu``,
model matrix ``U = diag(dmu/deta) X``, working variance ``Theta = diag(v(mu))``, weights
``W = Theta^-1``, bread ``M = (U' W U)^-1``):

- **CR2.** Cluster ``j``'s residuals are multiplied by ``A_j = R_j' B_j^(-1/2) R_j`` with
  ``R_j = Theta_j^(1/2)`` and ``B_j = R_j (Theta_j - U_j M U_j') R_j'``, so that the sandwich is
  unbiased when the working model holds. ``V = M (sum_j E_j e_j e_j' E_j') M`` with
  ``E_j = U_j' W_j A_j``. Eigenvalues of ``B_j`` at ~0 (a level seen in one cluster) get a zero
  inverse square root, as in clubSandwich's ``matrix_power``.
- **Degrees of freedom.** For a ``q x p`` constraint matrix ``C``, ``C V C'`` is approximated by a
  scaled Wishart with ``eta`` degrees of freedom chosen to match the total variance of its
  entries under the working model (normal errors with covariance ``Theta``); the Wald statistic
  ``Q`` then gives ``F = (eta - q + 1) / (eta q) Q ~ F(q, eta - q + 1)`` (Hotelling's T²). For
  one coefficient this is the Satterthwaite t test with ``eta`` degrees of freedom. ``eta``
  accounts for every cluster that informs the contrast -- the reference level's too -- and for
  unequal cluster sizes and leverage, which a rule like ``t(m - 1)`` ignores.

Collapsed cells: all rows of a cell share ``x`` and ``mu``, so a cluster's row space splits into
the cell-mean directions and their complement; ``U``, ``Theta`` and ``A_j`` act on the cell-mean
directions alone (``A_j`` is the identity on the complement, which never reaches the score).
Each cluster is therefore represented by its cells with ``U_c = sqrt(n_c) dmu/deta x_c``. An
unclustered table is the special case of one row per cluster (HC2); its rows of one cell are
identical "clusters", handled with a multiplicity instead of one entry per row.

The variance of the entries of ``C V C'`` needs sums over pairs of clusters; they are expanded
into sums over single clusters (the tensor ``T`` below), so the cost is linear in the number of
clusters rather than quadratic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: relative tolerance below which an eigenvalue of ``B_j`` counts as zero
_EIG_TOL = 1e-10


@dataclass(frozen=True)
class ClusterPieces:
    """What the CR2 covariance and the HTZ degrees of freedom need, per cluster ("unit").

    ``scores``: adjusted score of each cluster, ``E_j e_j`` (units x p); None for one cluster
    per row, whose HC2 meat needs each row's own squared residual (``studies.glm`` computes it
    from the cells' sums of squares) -- the pieces then serve the degrees of freedom only.
    ``G``: ``M E_j R_j`` (``R_j R_j = Theta_j``), padded to ``units x p x width``.
    ``Y``: ``[M E_j U_j, M E_j Theta_j W_j U_j]`` (units x p x 2p) and ``Q`` (2p x 2p): the
    covariance of two clusters' contrasts under the working model is
    ``d_jk G_j G_j' - Y_j Q Y_k'`` -- clubSandwich's three "H arrays" in one product.
    ``weight``: how many identical units each row stands for (1 when clustered; the rows of a
    cell when every row is its own cluster).
    """

    bread: np.ndarray
    scores: np.ndarray | None
    G: np.ndarray
    Y: np.ndarray
    Q: np.ndarray
    weight: np.ndarray

    @property
    def covariance(self) -> np.ndarray:
        """The CR2 covariance ``M (sum_j s_j s_j') M`` (clustered pieces only)."""
        if self.scores is None:
            raise ValueError("one-row clusters carry no scores; HC2 is computed from the cells")
        return self.bread @ (self.scores.T @ self.scores) @ self.bread


def _power_psd(B: np.ndarray, power: float) -> np.ndarray:
    lam, Q = np.linalg.eigh((B + B.T) / 2)
    tol = _EIG_TOL * max(float(np.abs(lam).max(initial=0.0)), 1e-300)
    val = np.where(lam > tol, np.clip(lam, tol, None) ** power, 0.0)
    return (Q * val) @ Q.T


def _adjustment(
    theta: np.ndarray,
    U: np.ndarray,
    bread: np.ndarray,
    N_mat: np.ndarray,
    w_inv: np.ndarray,
    *,
    independent: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``R = Theta^(1/2)`` and the CR2 adjustment ``A = R (R K R)^(-1/2) R`` of one cluster,
    ``K = Theta - H Theta - Theta H' + U N U'``.

    Why a second path: a crossed table's configuration is one cluster of ~750 cells, and two
    eigendecompositions of its 750 x 750 matrices per configuration made the two-way GLM of a
    Market-size switching table take over a minute. Under working independence ``N = M`` and
    ``W Theta = I``, so ``K = Theta - U M U'``; when the cluster's cells also share one variance
    ``c`` (a switch set per configuration gives every cell of it the same mean), ``Theta = c I``
    and ``A = (I - U M U' / c)^(-1/2)``, an identity plus a rank-p correction computed from the
    p x p eigenproblem of ``M^(1/2) U'U M^(1/2) / c``. Equal to the general path (tested)."""
    v = np.diag(theta)
    c = float(v[0]) if len(v) else 0.0
    diagonal_constant = (
        independent
        and c > 0
        and len(v) > 2 * U.shape[1]
        and np.all(np.abs(v - c) <= 1e-12 * c)
        and not np.any(theta - np.diag(v))
    )
    if not diagonal_constant:
        R = _power_psd(theta, 0.5)
        H = U @ bread @ (U * w_inv[:, None]).T  # U M U' W
        K = theta - H @ theta - theta @ H.T + U @ N_mat @ U.T
        return R, R @ _power_psd(R @ K @ R, -0.5) @ R
    root_m = _power_psd(bread, 0.5)
    B = U @ root_m / np.sqrt(c)
    lam, V = np.linalg.eigh(B.T @ B)
    keep = lam > _EIG_TOL * max(float(lam.max(initial=0.0)), 1e-300)
    Q = B @ V[:, keep] / np.sqrt(lam[keep])
    gap = 1.0 - lam[keep]  # eigenvalues of I - B B' on B's column space (1 elsewhere)
    val = np.where(gap > _EIG_TOL, np.clip(gap, _EIG_TOL, None) ** -0.5, 0.0)
    A = np.eye(len(v)) + (Q * (val - 1.0)) @ Q.T
    return np.sqrt(c) * np.eye(len(v)), A


def _units(n: np.ndarray, cluster: np.ndarray | None) -> tuple[list[np.ndarray], np.ndarray]:
    """The cells of each cluster, and each unit's multiplicity."""
    if cluster is None:  # every row its own cluster: one unit per cell, counted n_c times
        return [np.array([c]) for c in range(len(n))], n.astype(float)
    order = np.argsort(cluster, kind="stable")
    units = np.split(order, np.flatnonzero(np.diff(cluster[order])) + 1)
    return units, np.ones(len(units))


def _target(v: np.ndarray, n: np.ndarray, icc: float) -> np.ndarray:
    """Working covariance of one cluster on its cell-mean directions: rows with variance v and
    exchangeable correlation ``icc`` (the all-ones vector of the rows is sqrt(n) there)."""
    rt, s = np.sqrt(v), np.sqrt(n)
    return rt[:, None] * ((1 - icc) * np.eye(len(v)) + icc * np.outer(s, s)) * rt[None, :]


def cr2_pieces(
    X: np.ndarray,
    n: np.ndarray,
    v: np.ndarray,
    d: np.ndarray,
    residual_sums: np.ndarray,
    cluster: np.ndarray | None,
    *,
    icc: float = 0.0,
) -> ClusterPieces:
    """CR2 pieces of a GLM fitted on cells.

    ``X``: cells x p design; ``n``: rows per cell; ``v``: variance function at the cell's mean;
    ``d``: dmu/deta at the cell's mean (``v`` for a canonical link); ``residual_sums``: the sum
    of ``y - mu`` over the cell's rows; ``cluster``: the cluster of each cell, or None for one
    cluster per row. ``icc``: the working model's within-cluster correlation (0: working
    independence, clubSandwich's default; otherwise its ``target`` of an exchangeable
    covariance). Rows of one cell within a cluster are then correlated too, but that part lives
    off the cell-mean directions and never reaches the score.
    """
    if cluster is None:
        icc = 0.0
    units, weight = _units(n, cluster)
    scale = np.ones_like(n) if cluster is None else np.sqrt(n)
    U_all = X * (d * scale)[:, None]  # the model matrix on each unit's cell directions
    bread = np.linalg.inv((X * (n * d * d / v)[:, None]).T @ X)
    thetas = [_target(v[idx], n[idx] if cluster is not None else np.ones(1), icc) for idx in units]
    # M (sum_j U_j' W_j Theta_j W_j U_j) M: the working-model covariance of the estimates
    # (= M when Theta = W^-1, as for one row per cluster)
    N_mat = bread
    if cluster is not None:
        outer = sum(
            (U_all[idx] / v[idx, None]).T @ th @ (U_all[idx] / v[idx, None])
            for idx, th in zip(units, thetas, strict=True)
        )
        N_mat = bread @ outer @ bread
    width = max(len(u) for u in units)
    p = X.shape[1]
    scores = None if cluster is None else np.zeros((len(units), p))
    G = np.zeros((len(units), p, width))
    Y = np.zeros((len(units), p, 2 * p))
    for k, (idx, theta) in enumerate(zip(units, thetas, strict=True)):
        U, w_inv = U_all[idx], 1.0 / v[idx]
        R, A = _adjustment(theta, U, bread, N_mat, w_inv, independent=icc == 0.0)
        E = (U * w_inv[:, None]).T @ A
        ME = bread @ E
        if scores is not None:  # the residual along each cell-mean direction
            scores[k] = E @ (residual_sums[idx] / np.sqrt(n[idx]))
        G[k, :, : len(idx)] = ME @ R
        Y[k, :, :p] = ME @ U
        Y[k, :, p:] = ME @ theta @ (U * w_inv[:, None])
    Q = np.block([[N_mat, -bread], [-bread, np.zeros_like(bread)]])
    return ClusterPieces(bread=bread, scores=scores, G=G, Y=Y, Q=Q, weight=weight)


def htz_df(pieces: ClusterPieces, C: np.ndarray) -> float:
    """Pustejovsky–Tipton's ``eta`` for the constraint ``C`` (q x p): the Wishart degrees of
    freedom that match the total variance of the entries of ``C V C'`` under the working model.
    With q = 1 this is the Satterthwaite degrees of freedom of the contrast's t test."""
    C = np.atleast_2d(np.asarray(C, dtype=float))
    q, w = C.shape[0], pieces.weight
    CG = C @ pieces.G  # units x q x width
    CY = C @ pieces.Y  # units x q x 2p
    D = CG @ CG.transpose(0, 2, 1)  # C G_j G_j' C'
    cross = (CY @ pieces.Q) @ CY.transpose(0, 2, 1)  # C Y_j Q Y_j' C'
    root = _power_psd(np.tensordot(w, D + cross, axes=1), -0.5)
    if not np.any(root):
        return float("nan")
    D = root @ D @ root
    Yt = root @ CY
    Zt = Yt @ pieces.Q
    cross = Zt @ Yt.transpose(0, 2, 1)
    # T1 = sum_j Y_j (x) Y_j and T2 = sum_j Z_j (x) Z_j as (q r) x (q r) matrices (r = 2p)
    flat_y = Yt.reshape(len(w), -1)
    flat_z = Zt.reshape(len(w), -1)
    r = Yt.shape[2]
    T1 = ((flat_y * w[:, None]).T @ flat_y).reshape(q, r, q, r)
    T2 = ((flat_z * w[:, None]).T @ flat_z).reshape(q, r, q, r)
    # sums over pairs of clusters of tr(B_jk B_jk) and (tr B_jk)^2, B_jk = d_jk D_j + Y_j Q Y_k'
    tr_bb = (
        np.einsum("j,jst,jts->", w, D, D)
        + 2 * np.einsum("j,jst,jts->", w, D, cross)
        + np.einsum("sutw,tusw->", T1, T2)
    )
    trD, trC = np.trace(D, axis1=1, axis2=2), np.trace(cross, axis1=1, axis2=2)
    tr_sq = w @ (trD * trD) + 2 * w @ (trD * trC) + float((T1 * T2).sum())
    total = tr_bb + tr_sq
    return float(q * (q + 1) / total) if total > 0 else float("nan")


def htz_test(statistic: float, q: int, eta: float) -> tuple[float, float]:
    """Hotelling's T² approximation: the F statistic and its denominator degrees of freedom
    (``eta - q + 1``; NaN when not positive, and then no p-value can be given)."""
    df = eta - q + 1
    if not np.isfinite(df) or df <= 0:
        return float("nan"), float("nan")
    return (df / eta) * statistic / q, df
