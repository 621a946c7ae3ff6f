"""Reference values for tests/model.rs::nt_xent_matches_the_numpy_reference.

Computed independently of candle, in float64 NumPy: the NT-Xent loss written out from
the SimCLR paper's eq. (1) with explicit loops, and its gradient with respect to z by central
finite differences (step 1e-6, accurate to ~1e-9). Rows 2k and 2k+1 are the two views of
sample k. Run: python tests/reference/nt_xent_reference.py
"""
import math

import numpy as np

TAU = 0.5
ROWS, DIM = 6, 4


def z0():
    return np.array([[math.sin(1.3 * i + 0.7 * j) + 0.1 * j for j in range(DIM)] for i in range(ROWS)], dtype=np.float64)


def loss(z):
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    total = 0.0
    for i in range(ROWS):
        pos = i ^ 1
        num = math.exp(zn[i] @ zn[pos] / TAU)
        den = sum(math.exp(zn[i] @ zn[k] / TAU) for k in range(ROWS) if k != i)
        total += -math.log(num / den)
    return total / ROWS


def main():
    z = z0()
    print("loss", repr(loss(z)))
    h = 1e-6
    grad = np.zeros_like(z)
    for i in range(ROWS):
        for j in range(DIM):
            zp, zm = z.copy(), z.copy()
            zp[i, j] += h
            zm[i, j] -= h
            grad[i, j] = (loss(zp) - loss(zm)) / (2 * h)
    print("grad", [repr(float(g)) for g in grad.ravel()])


if __name__ == "__main__":
    main()
