"""microgpt's model on fastgrad's fused layers: `python -m fastgrad.gpt [steps]`.

The same one-layer GPT as microgpt (and examples/microgpt.py): 16-wide embeddings, 4
heads, 16 positions, a ReLU MLP, a KV cache, trained one name per step with Adam (betas
0.85 and 0.99, eps 1e-8, lr 0.01 decaying linearly to 0), then sampled at temperature
0.5. Here each layer is one call of fastgrad.functional (linear, with the residual
connections and the MLP's ReLU in its rows, attention, rmsnorm, cross_entropy; add for
the embeddings), which builds its nodes in C, over weight matrices packed once
(functional.matrix), and fastgrad.optim.Adam updates the parameters in a C loop.
Seeded the same way, it draws the same weights as the pure-Python script and trains
along its loss curve to rounding.

    gpt = GPT()                        # random.seed(seed), the names shuffled, weights drawn
    for step in range(1000):
        loss = gpt.train_step(step, 1000)
    print(gpt.sample())                # under no_grad: no graph is recorded

Run as a module it trains for 1,000 steps with a progress bar, prints 20 sampled names
and writes the loss curve to gpt-output/loss.png (tqdm draws the bar and matplotlib the
picture: the demo extra; without them it prints a line per tenth of the run, and no
picture).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any

from fastgrad import functional as F
from fastgrad import optim
from fastgrad._cli import progress, run
from fastgrad.datasets import names
from fastgrad.engine import Value
from fastgrad.grad_mode import no_grad


class GPT:
    """microgpt's model, data and optimizer; `Value` is the class its weights are made of
    (fastgrad.engine.Value, fastgrad.microgpt.Value, or either engine's)."""

    n_layer, n_embd, n_head, block_size = 1, 16, 4, 16

    def __init__(self, seed: int = 42, Value: Any = Value) -> None:
        random.seed(seed)
        self.docs = names()
        random.shuffle(self.docs)
        self.chars = sorted(set(''.join(self.docs)))
        self.bos = len(self.chars)
        self.vocab_size = len(self.chars) + 1
        self.head_dim = self.n_embd // self.n_head
        n, v = self.n_embd, self.vocab_size

        def matrix(rows: int, cols: int, std: float = 0.08) -> list[list[Any]]:
            return [[Value(random.gauss(0, std)) for _ in range(cols)] for _ in range(rows)]

        # drawn in microgpt's order, so that one seed gives its weights
        self.weights = {'wte': matrix(v, n), 'wpe': matrix(self.block_size, n),
                        'lm_head': matrix(v, n)}
        for layer in range(self.n_layer):
            for name, rows, cols in (('attn_wq', n, n), ('attn_wk', n, n), ('attn_wv', n, n),
                                     ('attn_wo', n, n), ('mlp_fc1', 4 * n, n),
                                     ('mlp_fc2', n, 4 * n)):
                self.weights[f'layer{layer}.{name}'] = matrix(rows, cols)
        self.params = [p for mat in self.weights.values() for row in mat for p in row]
        # the matrices linear() multiplies by, packed once (F.matrix: the same Values)
        self.lm_head = F.matrix(self.weights['lm_head'])
        self.layers = [tuple(F.matrix(self.weights[f'layer{layer}.{name}']) for name in (
            'attn_wq', 'attn_wk', 'attn_wv', 'attn_wo', 'mlp_fc1', 'mlp_fc2'))
            for layer in range(self.n_layer)]
        self.lr = 0.01
        self.optimizer = optim.Adam(self.params, lr=self.lr, betas=(0.85, 0.99), eps=1e-8)

    def tokens(self, doc: str) -> list[int]:
        return [self.bos] + [self.chars.index(c) for c in doc] + [self.bos]

    def new_cache(self) -> list[tuple[list[list[Any]], list[list[Any]]]]:
        """An empty KV cache: per layer, the keys and the values of the positions so far
        (one list of n_embd Values per position, as microgpt keeps them)."""
        return [([], []) for _ in range(self.n_layer)]

    def forward(self, token: int, pos: int, cache: list[Any]) -> list[Any]:
        """The logits of the next token after `token` at `pos`; cache (new_cache()) holds
        the keys and values of the earlier positions, and this one's are appended to it."""
        W, linear, rmsnorm, add = self.weights, F.linear, F.rmsnorm, F.add
        x = rmsnorm(add(W['wte'][token], W['wpe'][pos]))
        for (wq, wk, wv, wo, fc1, fc2), (keys, values) in zip(self.layers, cache):
            skip = x
            x = rmsnorm(x)
            q = linear(x, wq)
            keys.append(linear(x, wk))
            values.append(linear(x, wv))
            # every head's softmax(q . k_t / sqrt(head_dim)) over the cached positions,
            # weighting their values
            heads = F.attention(q, keys, values, self.n_head)
            x = linear(heads, wo, skip)                 # the residual added in wo's rows
            skip = x
            x = linear(rmsnorm(x), fc1, relu=True)      # the ReLU in fc1's rows
            x = linear(x, fc2, skip)
        return linear(x, self.lm_head)

    def loss(self, doc: str) -> Any:
        """The mean cross-entropy of predicting each next token of doc (one graph)."""
        tokens = self.tokens(doc)
        n = min(self.block_size, len(tokens) - 1)
        cache = self.new_cache()
        losses = [F.cross_entropy(self.forward(tokens[pos], pos, cache), tokens[pos + 1])
                  for pos in range(n)]
        return (1 / n) * sum(losses)

    def train_step(self, step: int, num_steps: int) -> float:
        """One step on name number `step`: loss, backward, Adam with the lr decayed
        linearly over num_steps. Returns the loss."""
        loss = self.loss(self.docs[step % len(self.docs)])
        loss.backward()
        self.optimizer.param_groups[0]['lr'] = self.lr * (1 - step / num_steps)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return float(loss.data)

    def sample(self, temperature: float = 0.5) -> str:
        """A name drawn token by token until the model emits BOS, with no graph recorded."""
        with no_grad():
            cache = self.new_cache()
            token, out = self.bos, []
            for pos in range(self.block_size):
                logits = self.forward(token, pos, cache)
                probs = F.softmax([logit / temperature for logit in logits])
                token = random.choices(range(self.vocab_size), weights=[p.data for p in probs])[0]
                if token == self.bos:
                    break
                out.append(self.chars[token])
        return ''.join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fastgrad.gpt", description="Trains microgpt's model on fastgrad's "
        "fused layers, prints 20 sampled names and writes the loss curve to "
        "gpt-output/loss.png.")
    parser.add_argument("steps", nargs="?", type=int, default=1000,
                        help="training steps (default 1000)")
    num_steps = parser.parse_args(argv).steps
    if num_steps < 1:
        parser.error("steps must be at least 1")

    gpt = GPT()
    print(f"{len(gpt.docs)} names, vocabulary {gpt.vocab_size}, {len(gpt.params)} parameters")
    losses = []
    show, close = progress(num_steps)
    for step in range(num_steps):
        losses.append(gpt.train_step(step, num_steps))
        show(step, loss=f"{losses[-1]:.4f}")
    close()
    for i in range(20):
        print(f"sample {i + 1:2d}: {gpt.sample()}")
    try:
        draw(losses, "gpt-output/loss.png")
    except ImportError:
        print("no loss curve: matplotlib is not installed (pip install fastgrad[demo])",
              file=sys.stderr)
        return
    print("loss curve: gpt-output/loss.png")


def draw(losses: list[float], path: str) -> None:
    """The loss per step and its running mean, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(losses, lw=0.6, alpha=0.5, label="loss per step")
    window = 50
    if len(losses) >= window:
        smooth = [sum(losses[k - window:k]) / window for k in range(window, len(losses) + 1)]
        ax.plot(range(window - 1, len(losses)), smooth, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("microgpt on fastgrad's fused layers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run(main)
