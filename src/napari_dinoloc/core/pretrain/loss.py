"""DINO's self-distillation loss with the teacher's centring and sharpening."""

from __future__ import annotations


def make_dino_loss(out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
    import torch

    F = torch.nn.functional

    class DinoLoss(torch.nn.Module):
        """Cross-entropy between the teacher's softmax((t - center) / tau_t) on each global view and the
        student's softmax(s / tau_s) on every other view; the centre follows the teacher's batch mean."""

        def __init__(self) -> None:
            super().__init__()
            self.student_temp = student_temp
            self.center_momentum = center_momentum
            self.register_buffer("center", torch.zeros(1, out_dim))

        def forward(self, student_out, teacher_out, n_views: int, teacher_temp: float):
            student = (student_out.float() / self.student_temp).chunk(n_views)
            teacher = F.softmax((teacher_out.float() - self.center) / teacher_temp, dim=-1).detach().chunk(2)
            total, terms = 0.0, 0
            for t_index, q in enumerate(teacher):
                for s_index, s in enumerate(student):
                    if s_index == t_index:  # the same view: nothing to learn
                        continue
                    total = total + torch.sum(-q * F.log_softmax(s, dim=-1), dim=-1).mean()
                    terms += 1
            self.update_center(teacher_out)
            return total / terms

        @torch.no_grad()
        def update_center(self, teacher_out) -> None:
            batch_center = teacher_out.float().mean(dim=0, keepdim=True)
            self.center.mul_(self.center_momentum).add_(batch_center * (1.0 - self.center_momentum))

    return DinoLoss()
