"""microgpt's model in PyTorch, batched per position: what a tensor library does with it.

Each position is one forward call on 16-wide vectors (the KV cache holds the earlier
positions' keys and values as rows), float64 on one thread, so that it computes what the
scalar engines compute; the weights are copied from a loaded examples/microgpt.py, the
optimizer is torch.optim.Adam with microgpt's betas, eps and linear learning-rate decay.
"""
import torch


class TorchGPT:
    def __init__(self, script):
        torch.set_num_threads(1)
        self.s = script
        self.w = {name: torch.tensor([[p.data for p in row] for row in mat], dtype=torch.float64,
                                     requires_grad=True)
                  for name, mat in script.weights.items()}
        self.opt = torch.optim.Adam(list(self.w.values()), lr=script.learning_rate,
                                    betas=(script.beta1, script.beta2), eps=script.eps)

    @staticmethod
    def rmsnorm(x):
        return x * ((x * x).mean() + 1e-5) ** -0.5

    def forward(self, token, pos, keys, values):
        s, w = self.s, self.w
        hd = s.head_dim
        x = self.rmsnorm(w['wte'][token] + w['wpe'][pos])
        for layer in range(s.n_layer):
            skip = x
            x = self.rmsnorm(x)
            q = w[f'layer{layer}.attn_wq'] @ x
            keys[layer].append(w[f'layer{layer}.attn_wk'] @ x)
            values[layer].append(w[f'layer{layer}.attn_wv'] @ x)
            K = torch.stack(keys[layer]).view(-1, s.n_head, hd)      # (t, heads, hd)
            V = torch.stack(values[layer]).view(-1, s.n_head, hd)
            scores = torch.einsum('hd,thd->ht', q.view(s.n_head, hd), K) / hd ** 0.5
            attn = torch.softmax(scores, dim=1)
            heads = torch.einsum('ht,thd->hd', attn, V).reshape(-1)
            x = w[f'layer{layer}.attn_wo'] @ heads + skip
            skip = x
            x = torch.relu(w[f'layer{layer}.mlp_fc1'] @ self.rmsnorm(x))
            x = w[f'layer{layer}.mlp_fc2'] @ x + skip
        return w['lm_head'] @ x

    def train_step(self, step, num_steps):
        s = self.s
        doc = s.docs[step % len(s.docs)]
        tokens = [s.BOS] + [s.chars.index(c) for c in doc] + [s.BOS]
        n = min(s.block_size, len(tokens) - 1)
        keys, values = [[] for _ in range(s.n_layer)], [[] for _ in range(s.n_layer)]
        logits = torch.stack([self.forward(tokens[p], p, keys, values) for p in range(n)])
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(tokens[1:n + 1]))
        self.opt.zero_grad()
        loss.backward()
        for g in self.opt.param_groups:
            g['lr'] = s.learning_rate * (1 - step / num_steps)
        self.opt.step()
        return loss.item()
