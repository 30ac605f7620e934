#!/usr/bin/env bash
# The main job on the embedded digits, as a user with few labels meets it: 5 labelled digits per class,
# the other 1,747 unlabelled. `ganaug augment` measures on those 50 labels what each ingredient is worth
# (classical augmentation, pseudo-labels, a GAN's images), writes the training set that measurably helps,
# and says so in a sentence. Re-running resumes where it stopped.
set -euo pipefail

RUN_DIR=${RUN_DIR:-runs/demo}
K=${K:-5}

python scripts/few_labels.py --source digits --k "$K" --out "$RUN_DIR/data"
# The small version of the estimate, sized for about 10 minutes on 2 cores: 3 folds, 400-step GANs,
# 400-step FixMatch teachers and the elastic distortion (the standard policy for digits) instead of
# choosing among three policies. Drop those flags for the full one (docs/augment.md).
ganaug augment --labelled "$RUN_DIR/data/labelled.npz" --unlabelled "$RUN_DIR/data/unlabelled.npz" \
    --out "$RUN_DIR/train_set" --folds 3 --policy elastic --gan-steps 400 --teacher-steps 400 \
    --config configs/demo.yaml

cat <<DONE

Demo finished.
  training set:      $RUN_DIR/train_set  (ImageFolder tree + manifest.csv with sampling weights)
  teacher (ONNX):    $RUN_DIR/train_set/teacher.onnx
  the estimate:      $RUN_DIR/train_set/report.md
  fold generators:   $RUN_DIR/train_set.work/folds/  (TensorBoard: tensorboard --logdir $RUN_DIR/train_set.work)
The GAN trainer, exporter and sampler on their own, under torchrun: make demo-train
DONE
