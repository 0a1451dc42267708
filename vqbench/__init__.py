"""vqbench: a benchmark and leaderboard harness for vector quantizers."""
from vqbench.contract import Quantizer, QuantizerOutput

__version__ = "0.1.0"
__all__ = ["Quantizer", "QuantizerOutput", "__version__"]
