#!/usr/bin/env python3
"""Apply, one at a time, the mutants of the GAN maths that must fail tests/test_gan_math.py, run it,
and put the code back.

    python scripts/hand_mutants.py     # prints KILLED or SURVIVED per mutant; exit 1 if any survived

mutmut (docs/reliability.md, "Mutation testing") makes small mutants by itself; these are the
larger ones issue 13 names (a flipped generator loss, swapped hinge terms, no R1, no EMA update, a
no-op translation), three of the mode-seeking term (never added, pairs of other classes, agreement
rewarded), and one mutmut cannot make (it leaves decorated functions such as the `adaptive`
property alone). Each file is restored in a `finally`, even on Ctrl-C.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, file, original text (must occur exactly once), mutated text)
MUTANTS = [
    ("generator loss sign flipped (hinge)", "ganaug/train/losses.py",
     "        return -fake_logits.mean()", "        return fake_logits.mean()"),
    ("generator loss sign flipped (bce)", "ganaug/train/losses.py",
     "return F.softplus(-fake_logits).mean()  # non-saturating", "return F.softplus(fake_logits).mean()  # non-saturating"),
    ("hinge terms swapped", "ganaug/train/losses.py",
     "return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()",
     "return F.relu(1 + real_logits).mean() + F.relu(1 - fake_logits).mean()"),
    ("hinge real and fake logits swapped", "ganaug/train/losses.py",
     "return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()",
     "return F.relu(1 - fake_logits).mean() + F.relu(1 + real_logits).mean()"),
    ("R1 zeroed (the penalty)", "ganaug/train/losses.py",
     "    return grad.float().square().sum(dim=tuple(range(1, grad.dim()))).mean()",
     "    return 0 * grad.float().square().sum(dim=tuple(range(1, grad.dim()))).mean()"),
    ("R1 zeroed (never added to D's loss)", "ganaug/train/objective.py",
     "            loss = loss + term * (self.r1_gamma / 2 * self.r1_every)\n", "            pass\n"),
    ("EMA update deleted (the average)", "ganaug/train/ema.py",
     "            torch._foreach_lerp_(list(self.module.parameters()), list(model.parameters()), 1.0 - beta)\n",
     "            pass\n"),
    ("EMA update deleted (the whole method)", "ganaug/train/ema.py",
     "        beta = ema_beta(self.decay, self.rampup, batch_images, images_seen)\n", "        return\n"),
    ("translation a no-op", "ganaug/train/augment.py",
     '    """Shift each image by up to ratio * size pixels in each direction."""\n',
     '    """Shift each image by up to ratio * size pixels in each direction."""\n    return x\n'),
    ("translation policy bound to the identity", "ganaug/train/augment.py",
     'POLICIES = {"color": color, "translation": translation,', 'POLICIES = {"color": color, "translation": lambda x: x,'),
    ("mode seeking never added to G's loss", "ganaug/train/objective.py",
     "            loss = loss + self.diversity_weight * term\n", "            pass\n"),
    ("mode seeking pairs images of other classes", "ganaug/train/objective.py",
     "        return torch.cat([labels[:half], labels[:half], labels[2 * half:]])",
     "        return labels"),
    ("mode seeking rewards images that agree", "ganaug/train/losses.py",
     "    return 1.0 / (image_distance / latent_distance + eps)", "    return image_distance / latent_distance"),
    ("ADA on with a zero target (a property: mutmut skips it)", "ganaug/train/augment.py",
     "        return self.target > 0\n", "        return self.target >= 0\n"),
]


def main() -> int:
    survived = []
    for name, path, original, mutated in MUTANTS:
        file = ROOT / path
        text = file.read_text()
        if text.count(original) != 1:
            print(f"{name}: the original text is not in {path} exactly once; update this script")
            return 2
        file.write_text(text.replace(original, mutated))
        try:
            run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                                  "tests/test_gan_math.py"], cwd=ROOT, capture_output=True, text=True)
        finally:
            file.write_text(text)
        failed = next((line for line in run.stdout.splitlines() if line.startswith("FAILED")), "")
        print(f"{'KILLED' if run.returncode else 'SURVIVED'}  {name}  {failed.split(' - ')[0]}")
        if run.returncode == 0:
            survived.append(name)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
