"""The k-means reference's GPU path: its searches find what the CPU's (faiss) find, and on CUDA the
whole algorithm reaches the CPU's objective and is cached under a name of its own."""
import pytest
import torch

from vqbench.kmeans import cached_kmeans_mse, faiss_search, kmeans
from vqbench.ops import _search_torch, nearest_code

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def mixture(n=4096, d=8, clusters=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g) * 3
    return centres[torch.randint(clusters, (n,), generator=g)] + torch.randn(n, d, generator=g)


def test_torch_search_finds_faiss_top_m_in_any_chunking():
    x, c = mixture(700), torch.randn(300, 8)
    want_idx, want_dist = faiss_search(x, c, 4)
    for budget in (300, 300 * 64, 2 ** 26):  # one row a chunk, several chunks, one chunk
        assert torch.equal(_search_torch(x, c, budget, 4), want_idx)  # the candidates, nearest first
        idx, dist = nearest_code(x, c, budget, backend="torch")  # the nearest, with its distance
        assert torch.equal(idx, want_idx[:, 0])
        assert torch.allclose(dist, want_dist[:, 0], rtol=1e-5, atol=1e-5)


@CUDA
def test_kmeans_on_cuda_reaches_the_cpu_objective():
    x = mixture()
    cpu, gpu = kmeans(x, 128, n_init=1)[1], kmeans(x, 128, n_init=1, device="cuda")[1]
    assert gpu == pytest.approx(cpu, rel=0.02)


@CUDA
def test_a_gpu_reference_is_cached_under_its_own_name(tmp_path, monkeypatch):
    monkeypatch.setenv("VQBENCH_HOME", str(tmp_path))
    x = mixture(1024)
    gpu = cached_kmeans_mse(x, 16, key="probe", n_init=1)
    cpu = cached_kmeans_mse(x, 16, key="probe", n_init=1, device="cpu")
    names = sorted(p.name for p in (tmp_path / "kmeans").glob("*.json"))
    assert names == ["probe-k16-n1-v3-cuda.json", "probe-k16-n1-v3.json"]
    assert gpu == pytest.approx(cpu, rel=0.02)
