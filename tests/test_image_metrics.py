"""Image-quality metrics (host NumPy) against closed forms, SciPy and slow loops."""

import numpy as np
import pytest
import scipy.linalg
from scipy import stats

from diffusion_jax import metrics


def _random_cov(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T / (rank or d) + (0.0 if rank else 0.1 * np.eye(d))


def _fd_scipy(mu1, c1, mu2, c2):
  # The textbook formula of Heusel et al.'s code, with scipy's general matrix square root.
  root = scipy.linalg.sqrtm(c1 @ c2)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(root.real))


# --- Frechet distance ---------------------------------------------------------------------------

def test_frechet_distance_closed_form_for_diagonal_covariances():
  rng = np.random.default_rng(0)
  d = 16
  a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  # Commuting covariances: W2^2 = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2.
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  # float64 eigendecompositions of well-conditioned 16 x 16 matrices: 1e-10 relative.
  np.testing.assert_allclose(metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), expected,
                             rtol=1e-10)
  # The same law rotated by one orthogonal Q stays commuting and keeps the distance.
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  got = metrics.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
  np.testing.assert_allclose(got, expected, rtol=1e-9)  # rotation adds O(d eps) rounding


def test_frechet_distance_matches_scipy_sqrtm():
  rng = np.random.default_rng(1)
  for d in (1, 5, 32):
    c1, c2 = _random_cov(rng, d), _random_cov(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # Two algorithms (eigh of C1^1/2 C2 C1^1/2 vs Schur sqrtm of C1 C2) in float64: 1e-8.
    np.testing.assert_allclose(metrics.frechet_distance(mu1, c1, mu2, c2),
                               _fd_scipy(mu1, c1, mu2, c2), rtol=1e-8, atol=1e-10)


def test_frechet_distance_singular_and_identical():
  rng = np.random.default_rng(2)
  c = _random_cov(rng, 20, rank=3)  # rank 3 in 20-d: what n < D samples give
  mu = rng.normal(size=20)
  # Identical singular Gaussians: 0 up to sqrt of rounding in the clipped eigenvalues.
  assert metrics.frechet_distance(mu, c, mu, c) == pytest.approx(0.0, abs=1e-6)
  # Against a point mass (C2 = 0): |mu1 - mu2|^2 + tr C1, exactly.
  got = metrics.frechet_distance(mu, c, mu + 1.0, np.zeros((20, 20)))
  np.testing.assert_allclose(got, 20.0 + np.trace(c), rtol=1e-10)


def test_fd_of_gaussian_samples_and_stats():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(4000, 3)) * [1.0, 2.0, 0.5] + [1.0, 0.0, -1.0]
  mu, cov = metrics.gaussian_stats(x)
  np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-12)  # same estimator as numpy
  np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
  y = rng.normal(size=(4000, 3))
  expected = 1.0 + 1.0 + (1 - 1) ** 2 + (np.sqrt(4) - 1) ** 2 + (np.sqrt(0.25) - 1) ** 2
  # Sampling error of means and covariances from 4000 draws: a few 1e-2 on a value of 3.25.
  assert metrics.fd(x, y) == pytest.approx(expected, abs=0.15)
  assert metrics.fd(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_bad_input():
  with pytest.raises(ValueError, match="cov1"):
    metrics.frechet_distance(np.zeros(2), np.zeros((3, 3)), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="symmetric"):
    asymmetric = np.array([[1.0, 0.5], [0.0, 1.0]])
    metrics.frechet_distance(np.zeros(2), asymmetric, np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="same dimension"):
    metrics.fd(np.zeros((4, 2)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match="non-finite"):
    metrics.fd(np.full((4, 2), np.nan), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="x_features must have shape"):
    metrics.fd(np.zeros(4), np.zeros((4, 1)))


# --- KID ----------------------------------------------------------------------------------------

def _mmd2_loop(x, y):
  m, d = len(x), x.shape[1]
  k = lambda a, b: (a @ b / d + 1.0) ** 3
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
  return xx + yy - 2 * xy


def test_kid_matches_slow_loop():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(25, 4)), rng.normal(size=(25, 4)) + 0.5
  ref = _mmd2_loop(x, y)
  np.testing.assert_allclose(metrics.mmd2_unbiased(x, y), ref, rtol=1e-10)  # float64 sums
  # Full-size subsets are permutations of the sets: every subset gives the full-set value.
  mean, std = metrics.kid(x, y, num_subsets=3, subset_size=25)
  np.testing.assert_allclose(mean, ref, rtol=1e-10)
  assert std == pytest.approx(0.0, abs=1e-10)


def test_kid_subsets_average_to_the_full_set_u_statistic():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(40, 3)), 1.2 * rng.normal(size=(50, 3))
  # Each ordered pair is equally likely in a random subset, so E_subsets = the full U-statistic:
  # within-set terms over all i != j of each set, cross term over all n * m pairs.
  d = 3
  k = lambda a, b: (a @ b.T / d + 1.0) ** 3
  kxx, kyy = k(x, x), k(y, y)
  full = ((kxx.sum() - np.trace(kxx)) / (40 * 39) + (kyy.sum() - np.trace(kyy)) / (50 * 49)
          - 2 * k(x, y).mean())
  mean, std = metrics.kid(x, y, num_subsets=400, subset_size=10, seed=0)
  # Monte Carlo over 400 subsets: 4 standard errors.
  assert abs(mean - full) < 4 * std / np.sqrt(400)


def test_kid_same_law_near_zero_and_bad_input():
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
  mean, std = metrics.kid(x, y, num_subsets=20, subset_size=100)
  assert abs(mean) < 3 * std  # unbiased: scatters around 0 for one law
  far, _ = metrics.kid(x, y + 2.0, num_subsets=20, subset_size=100)
  assert far > 10 * std
  with pytest.raises(ValueError, match="subset_size"):
    metrics.kid(x, y, subset_size=301)
  with pytest.raises(ValueError, match="num_subsets"):
    metrics.kid(x, y, num_subsets=0, subset_size=10)


# --- Inception Score, class balance -------------------------------------------------------------

def test_inception_score_known_cases():
  k = 7
  uniform = np.full((60, k), 1.0 / k)
  # Every sample gets the marginal: KL = 0, IS = 1 (exp of sums of 0 in float64).
  assert metrics.inception_score(uniform, 3) == pytest.approx((1.0, 0.0), abs=1e-12)
  one_hot = np.eye(k)[np.arange(70) % k]  # balanced in each of the 2 splits of 35 = 5 k
  assert metrics.inception_score(one_hot, 2) == pytest.approx((k, 0.0), abs=1e-9)


def test_inception_score_matches_scipy_entropy_loop():
  rng = np.random.default_rng(7)
  p = rng.dirichlet(np.full(5, 0.3), size=90)
  scores = []
  for part in np.array_split(p, 3):
    marginal = part.mean(0)
    scores.append(np.exp(np.mean([stats.entropy(row, marginal) for row in part])))
  mean, std = metrics.inception_score(p, 3)
  np.testing.assert_allclose([mean, std], [np.mean(scores), np.std(scores, ddof=1)], rtol=1e-10)
  with pytest.raises(ValueError, match="probs must be class probabilities"):
    metrics.inception_score(p * 2, 3)
  with pytest.raises(ValueError, match="num_splits"):
    metrics.inception_score(p, 91)


def test_class_entropy_confidence_histogram():
  probs = np.eye(10)[np.arange(100) % 10] * 0.95 + 0.005  # rows sum to 1, max 0.955
  assert metrics.class_entropy_bits(probs) == pytest.approx(np.log2(10), abs=1e-12)
  assert metrics.confident_fraction(probs) == 1.0
  np.testing.assert_array_equal(metrics.class_histogram(probs), np.full(10, 10))
  collapsed = np.tile([0.5, 0.3, 0.2], (8, 1))
  assert metrics.class_entropy_bits(collapsed) == 0.0
  assert metrics.confident_fraction(collapsed) == 0.0
  half = np.array([[0.95, 0.05], [0.2, 0.8], [0.05, 0.95], [0.91, 0.09]])
  assert metrics.confident_fraction(half) == 0.75
  assert metrics.class_entropy_bits(half) == pytest.approx(1.0)  # two classes, two each


# --- precision / recall, nearest neighbours -----------------------------------------------------

def _pr_loop(real, fake, k):
  def radii(a):
    d = np.linalg.norm(a[:, None] - a[None], axis=-1)
    return np.sort(d, axis=1)[:, k]  # index 0 is the point itself
  def inside(p, c, r):
    return np.mean([any(np.linalg.norm(q - c[i]) <= r[i] for i in range(len(c))) for q in p])
  return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def test_precision_recall_known_answers():
  rng = np.random.default_rng(8)
  real = rng.normal(size=(50, 4))
  assert metrics.precision_recall(real, real, k=3) == (1.0, 1.0)
  assert metrics.precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
  # Real: two clusters on a line, 0..9 and 20..29; fake: the first cluster and 5 far points.
  line = lambda v: np.stack([np.asarray(v, float), np.zeros(len(v))], 1)
  real = line([*range(10), *range(20, 30)])
  fake = line([*range(10), *range(100, 105)])
  # k = 1: every radius is 1. Fakes 0..9 sit on real points (10 of 15), reals 0..9 on fakes
  # (10 of 20); the others are >= 11 away from the other set.
  assert metrics.precision_recall(real, fake, k=1) == (pytest.approx(10 / 15), pytest.approx(0.5))


def test_precision_recall_matches_loop():
  rng = np.random.default_rng(9)
  real, fake = rng.normal(size=(40, 3)), 1.3 * rng.normal(size=(30, 3)) + 0.3
  assert metrics.precision_recall(real, fake, k=3) == pytest.approx(_pr_loop(real, fake, 3))
  with pytest.raises(ValueError, match="k must be"):
    metrics.precision_recall(real, fake, k=30)


def test_knn_radii_cross_the_row_block():
  rng = np.random.default_rng(10)
  x = rng.normal(size=(1100, 2))  # > one block of 1024 rows
  d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
  # Direct differences vs the |a|^2 + |b|^2 - 2ab expansion, float64: 1e-9 absolute.
  np.testing.assert_allclose(metrics.knn_radii(x, 3), np.sort(d, 1)[:, 3], atol=1e-9)
  q = x[:7] + 0.01
  direct = np.sqrt(((q[:, None] - x[None]) ** 2).sum(-1)).min(1)
  # sqrt of an expanded squared distance near 2e-4: rounding of |a|^2 ~ 1 is 1e-16, so 1e-7.
  np.testing.assert_allclose(metrics.nearest_neighbor_distances(q, x), direct, atol=1e-7)


def test_copy_fraction():
  rng = np.random.default_rng(11)
  train, held_out = rng.normal(size=(200, 5)), rng.normal(size=(100, 5))
  copies = train[:30] + 1e-6
  out = metrics.copy_fraction(np.concatenate([copies, rng.normal(size=(70, 5))]), train, held_out)
  # 30 exact copies are flagged; 70 fresh draws fall below the 5th percentile ~5% of the time.
  assert 0.30 <= out["copy_fraction"] <= 0.30 + 0.7 * 0.15
  assert out["copy_threshold"] == pytest.approx(
      np.percentile(metrics.nearest_neighbor_distances(held_out, train), 5))
  with pytest.raises(ValueError, match="percentile"):
    metrics.copy_fraction(copies, train, held_out, percentile=0)
