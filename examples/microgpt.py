"""A GPT trained on names in pure Python, written the way microgpt writes it.

Karpathy's microgpt (2026) trains a one-layer GPT on a list of names with nothing but a
scalar autograd `Value` whose ops return their local gradients. This script is the same
model, optimizer and loop in fastgrad's own words: the engine block below is a complete
scalar autograd of that kind, and everything after it uses only `+ * ** / -`, `exp`,
`log`, `relu`, `data`, `grad` and `backward()`.

To run it on fastgrad, replace the whole engine block by one line:

    from fastgrad.engine import Value          # or: from fastgrad.microgpt import Value

and nothing else. It then trains along the same loss curve (tests/test_microgpt.py does
exactly that replacement and compares the losses step by step), and `make bench` times
a training step both ways (the `microgpt` row).

    python examples/microgpt.py [steps]        # default 1000 steps, then 20 samples
"""
import math
import random
import sys

from fastgrad.datasets import names

# --- engine: begin ---
class Value:
    """A scalar in the graph: its value, its grad, its children, and the derivative of
    this node with respect to each child, computed when the node is made."""
    __slots__ = ('data', 'grad', '_children', '_local_grads')

    def __init__(self, data, children=(), local_grads=()):
        self.data = data
        self.grad = 0
        self._children = children
        self._local_grads = local_grads

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data + other.data, (self, other), (1, 1))

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return Value(self.data * other.data, (self, other), (other.data, self.data))

    def __pow__(self, k):               # k a number
        return Value(self.data ** k, (self,), (k * self.data ** (k - 1),))

    def exp(self):
        e = math.exp(self.data)
        return Value(e, (self,), (e,))

    def log(self):
        return Value(math.log(self.data), (self,), (1 / self.data,))

    def relu(self):
        return Value(max(0, self.data), (self,), (float(self.data > 0),))

    def __neg__(self): return self * -1
    def __radd__(self, other): return self + other
    def __rmul__(self, other): return self * other
    def __sub__(self, other): return self + (-other)
    def __rsub__(self, other): return other + (-self)
    def __truediv__(self, other): return self * other ** -1
    def __rtruediv__(self, other): return other * self ** -1

    def backward(self):
        # children before parents: a recursive depth-first walk, as microgpt's own (its
        # graphs are at most ~280 nodes deep, well inside Python's recursion limit)
        order, seen = [], set()

        def visit(v):
            if v not in seen:
                seen.add(v)
                for child in v._children:
                    visit(child)
                order.append(v)
        visit(self)
        self.grad = 1
        for v in reversed(order):       # chain rule: each child gets d(self)/d(child)
            for child, local in zip(v._children, v._local_grads):
                child.grad += local * v.grad
# --- engine: end ---

# The data: one name per document, shuffled; each character is a token, plus BOS, which
# starts and ends every name.
random.seed(42)
docs = names()
random.shuffle(docs)
chars = sorted(set(''.join(docs)))
BOS = len(chars)
vocab_size = len(chars) + 1

# The model: one transformer layer, 16-wide embeddings, 4 heads, 16 positions.
n_layer, n_embd, n_head, block_size = 1, 16, 4, 16
head_dim = n_embd // n_head


def matrix(rows, cols, std=0.08):
    return [[Value(random.gauss(0, std)) for _ in range(cols)] for _ in range(rows)]


weights = {'wte': matrix(vocab_size, n_embd), 'wpe': matrix(block_size, n_embd),
           'lm_head': matrix(vocab_size, n_embd)}
for layer in range(n_layer):
    weights[f'layer{layer}.attn_wq'] = matrix(n_embd, n_embd)
    weights[f'layer{layer}.attn_wk'] = matrix(n_embd, n_embd)
    weights[f'layer{layer}.attn_wv'] = matrix(n_embd, n_embd)
    weights[f'layer{layer}.attn_wo'] = matrix(n_embd, n_embd)
    weights[f'layer{layer}.mlp_fc1'] = matrix(4 * n_embd, n_embd)
    weights[f'layer{layer}.mlp_fc2'] = matrix(n_embd, 4 * n_embd)
params = [p for mat in weights.values() for row in mat for p in row]


def linear(x, w):
    return [sum(wi * xi for wi, xi in zip(row, x)) for row in w]


def softmax(logits):
    top = max(v.data for v in logits)        # shifting by the largest keeps exp <= 1
    exps = [(v - top).exp() for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def rmsnorm(x):
    ms = sum(xi * xi for xi in x) / len(x)
    scale = (ms + 1e-5) ** -0.5
    return [xi * scale for xi in x]


def gpt(token, pos, keys, values):
    """The logits of the token after `token` at position `pos`; keys and values are the
    cache of the positions before (one list per layer), appended to here."""
    x = [t + p for t, p in zip(weights['wte'][token], weights['wpe'][pos])]
    x = rmsnorm(x)
    for layer in range(n_layer):
        skip = x
        x = rmsnorm(x)
        q = linear(x, weights[f'layer{layer}.attn_wq'])
        keys[layer].append(linear(x, weights[f'layer{layer}.attn_wk']))
        values[layer].append(linear(x, weights[f'layer{layer}.attn_wv']))
        heads = []
        for h in range(n_head):
            lo, hi = h * head_dim, (h + 1) * head_dim
            q_h = q[lo:hi]
            k_h = [k[lo:hi] for k in keys[layer]]
            v_h = [v[lo:hi] for v in values[layer]]
            scores = [sum(q_h[j] * k_t[j] for j in range(head_dim)) / head_dim ** 0.5
                      for k_t in k_h]
            attn = softmax(scores)
            heads.extend(sum(attn[t] * v_h[t][j] for t in range(len(v_h)))
                         for j in range(head_dim))
        x = linear(heads, weights[f'layer{layer}.attn_wo'])
        x = [a + b for a, b in zip(x, skip)]
        skip = x
        x = rmsnorm(x)
        x = [h.relu() for h in linear(x, weights[f'layer{layer}.mlp_fc1'])]
        x = linear(x, weights[f'layer{layer}.mlp_fc2'])
        x = [a + b for a, b in zip(x, skip)]
    return linear(x, weights['lm_head'])


# Adam, with the learning rate decaying linearly to 0 over the run.
learning_rate, beta1, beta2, eps = 0.01, 0.85, 0.99, 1e-8
m = [0.0] * len(params)
v = [0.0] * len(params)


def training(num_steps):
    """microgpt's training loop, one step per next(): each step takes one name, the mean
    cross-entropy of predicting each next token, its backward and an Adam update, and
    yields the loss. Like microgpt's loop, which runs at module level, it keeps its
    variables from one step to the next: the last step's graph stays reachable (from
    loss, losses, logits, probs) until this step has rebound them all."""
    for step in range(num_steps):
        doc = docs[step % len(docs)]
        tokens = [BOS] + [chars.index(c) for c in doc] + [BOS]
        n = min(block_size, len(tokens) - 1)
        keys, values = [[] for _ in range(n_layer)], [[] for _ in range(n_layer)]
        losses = []
        for pos in range(n):
            logits = gpt(tokens[pos], pos, keys, values)
            probs = softmax(logits)
            loss_t = -probs[tokens[pos + 1]].log()
            losses.append(loss_t)
        loss = (1 / n) * sum(losses)
        loss.backward()
        lr = learning_rate * (1 - step / num_steps)
        for i, p in enumerate(params):
            m[i] = beta1 * m[i] + (1 - beta1) * p.grad
            v[i] = beta2 * v[i] + (1 - beta2) * p.grad ** 2
            m_hat = m[i] / (1 - beta1 ** (step + 1))
            v_hat = v[i] / (1 - beta2 ** (step + 1))
            p.data -= lr * m_hat / (v_hat ** 0.5 + eps)
            p.grad = 0
        yield loss.data


def sample(temperature=0.5):
    """A name drawn token by token from the model, until it emits BOS."""
    keys, values = [[] for _ in range(n_layer)], [[] for _ in range(n_layer)]
    token, out = BOS, []
    for pos in range(block_size):
        probs = softmax([logit / temperature for logit in gpt(token, pos, keys, values)])
        token = random.choices(range(vocab_size), weights=[p.data for p in probs])[0]
        if token == BOS:
            break
        out.append(chars[token])
    return ''.join(out)


if __name__ == '__main__':
    num_steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    print(f"{len(docs)} names, vocabulary {vocab_size}, {len(params)} parameters")
    for step, loss in enumerate(training(num_steps)):
        print(f"step {step + 1:4d} / {num_steps} | loss {loss:.4f}", end='\r', flush=True)
    print()
    for i in range(20):
        print(f"sample {i + 1:2d}: {sample()}")
