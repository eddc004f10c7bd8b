#!/usr/bin/env bash
# A fifth phase for the embedded model: an honest reply to what it cannot answer (other languages,
# off-topic questions) and questions asked after earlier turns. Runs in the WORK_DIR of
# tools/train_embedded.sh (its `train` and `heldout` sets) from phase 4's weights; writes
# `candidate` and its scores, and ships nothing: copy it into cogvlm/embedded/model only when the scores of
# MODEL_CARD.md hold within their noise and tests/embedded passes. About 40 minutes on a quiet 2-core CPU.
# Usage: tools/train_embedded_dialogue.sh WORK_DIR [PHASE4_WEIGHTS]; PHASE4_WEIGHTS defaults to `run`,
# tools/train_embedded.sh's phase 4. The shipped run started from its fp16 copy, cogvlm/embedded/model as
# of commit 9236b4a (`mkdir phase4; git archive 9236b4a cogvlm/embedded/model | tar -x -C phase4
# --strip-components=3`).
#
# The shipped model (the recipe below, run once on 2026-12-04). Scores against phase 4's, held-out set
# (seed 3) then CI set (seed 20261123):
#   held-out: caption 14->25, colour 180->189/261, shape 141->147/288, count 270->269, position 104->101/203,
#             grounding 36->39, box_caption 99->129, text 0->0
#   CI set:   caption 14->17, colour 98->102/141, shape 59->76/146, count 133->137, position 46->52/96,
#             grounding 17->15, box_caption 52->63, text 0->0
#   honest reply exact on 190/200 held-out off-topic questions (`cogvlm dialogue-data heldout --seed 6`).
# So three scores sit one to three answers under phase 4's (count and position held-out, grounding on the
# CI set), within the noise below; example.png was re-picked for it (EXAMPLE_SEED 2014, see the card).
# Why chasing each score is noise: a control run, 400 steps at lr 1.5e-5 on the phase 2-4 mix alone (no
# new data) from phase 4's weights, also lost colour 180->175, count 270->268, grounding 36->32 and
# position 104->97 held-out, and grounding 17->13 on the CI set. One binomial standard deviation at these
# rates is 5-6 answers of 300 (3-4 of 150); across the checkpoints of one run, grounding moves 27-39
# held-out. Phase 4's weights sit at a lucky point of that noise, which a bar of "every score at least
# as good" asks every retrained model to match.
# History of earlier recipes, none shipped:
# - 400 steps at peak lr 1e-4 on 8,000 samples (6% off-topic, 12% multi-turn): reply exact on 35/200.
# - 1,600 + 1,800 steps at peak lr 5e-5 then 2e-5 from the phase-4 weights (a first and a second mix):
#   reply 191/200, but grounding 36->32 held-out and 17->7 on the CI set.
# - The same with the image side frozen (`--freeze_params 'mixins.eva.*' '*vision*'`): grounding 36->28.
# - 800 steps at 1.5e-5 from that model on grounding x4 (36% of the samples): grounding stayed at 29.
# - Weight averages with the shipped model lost the reply.
# What worked better: a longer run at phase 4's rate (the card: every phase was still improving), the
# average of its last checkpoints, then a short polish.
set -euo pipefail
work=${1:?usage: $0 WORK_DIR [PHASE4_WEIGHTS]}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$work"
phase4=${2:-run}
export OMP_NUM_THREADS=1
common=(--nproc 2 --version chat_old --micro_batch_size 8 --weight_decay 0.01 --gradient_clipping 1.0
        --lr_decay_style cosine --min_lr_ratio 0.1 --zero_stage 0 --fp32 --full --no_lora
        --log_interval 25 --no_progress_bar)
# Phase 5a: the phase 2-4 mix plus 8,000 off-topic questions and 16,000 multi-turn ones (about 5% and 10%);
# the run reads its first 48,000 samples. 3,000 steps at phase 4's rate, 25 minutes.
cogvlm mix-data train --output train/phase5_all.jsonl --seed 11 --weight grounding=2 --weight text=2 \
    --weight color=0.5 --weight count=0.5 --weight caption=0.5 --unanswerable 8000 --multi_turn 16000
head -48000 train/phase5_all.jsonl > train/phase5.jsonl
cogvlm finetune "${common[@]}" --max_length 256 --save_interval 500 --from_pretrained "$phase4" \
    --save run5 --train_data train/phase5.jsonl --train_iters 3000 --lr 1.5e-4 --warmup 0.02 --seed 2033
python "$repo/tools/average_checkpoints.py" run5 run5_average 2000 2500 3000
# Phase 5b: a polish of the average with more grounding and count, at a fifth of the rate (600 steps).
cogvlm mix-data train --output train/phase5b_all.jsonl --seed 12 --weight grounding=3 --weight count=1.5 \
    --weight text=1 --weight color=0.5 --weight caption=0.5 --unanswerable 8000 --multi_turn 16000
head -9600 train/phase5b_all.jsonl > train/phase5b.jsonl
cogvlm finetune "${common[@]}" --max_length 256 --save_interval 200 --from_pretrained run5_average \
    --save run5b --train_data train/phase5b.jsonl --train_iters 600 --lr 3e-5 --warmup 0.03 --seed 2034
cogvlm convert --from_pretrained run5b --output candidate --to sat --dtype fp16 --overwrite
cp "$repo/cogvlm/embedded/model/generation_config.json" candidate/
cogvlm dialogue-data heldout --output heldout-dialogue --unanswerable 200 --multi_turn 300 --seed 6
cogvlm eval-synthetic --from_pretrained candidate --data heldout
cogvlm eval-synthetic --from_pretrained candidate --data heldout-dialogue
