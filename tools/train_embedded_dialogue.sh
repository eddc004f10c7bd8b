#!/usr/bin/env bash
# A fifth phase for the embedded model: an honest reply to what it cannot answer (other languages,
# off-topic questions) and questions asked after earlier turns. Runs in the WORK_DIR of
# tools/train_embedded.sh (its `train` and `heldout` sets) from the shipped phase-4 weights; writes
# `candidate` and its scores, and ships nothing: copy it into cogvlm/embedded/model only when every score
# of MODEL_CARD.md holds and tests/embedded passes. About 75 minutes on a 2-core CPU.
# Usage: tools/train_embedded_dialogue.sh WORK_DIR [PHASE4_WEIGHTS]; PHASE4_WEIGHTS defaults to `run`,
# tools/train_embedded.sh's phase 4 (the runs below started from its fp16 copy, cogvlm/embedded/model at
# commit e5d88ed).
#
# History. A first try (400 steps at peak lr 1e-4 on 8,000 samples, 6% off-topic, 12% multi-turn) was
# not shipped: the reply was exact on 35/200 held-out off-topic questions, and colour, count, position
# and grounding fell. The recipe below (run once, 2026-12-04, 3,400 steps, 75 min on a shared 2-core
# CPU) was not shipped either. The reply is learnt: 191/200 held-out off-topic questions exact, 42/42
# Chinese or Japanese ones of a fresh set; follow-ups score 118 of the 135 the same questions score alone
# (the phase-4 model: 76 of 122). But held-out (seed 3) count fell 270->267 and grounding 36->32 of 300
# (colour 180->181, shape 141->150, caption 14->21, box_caption 99->106, position 104->107), and on the
# CI set (seed 20261123) grounding fell 17->7 of 150, under its 0.07 threshold. 5a alone (1,600 steps)
# got colour 169, count 269, grounding 34; 5b's checkpoints at 600/1200 steps and weight averages did no
# better. The replies' many tokens outweigh one-word answers and boxes in the token-averaged loss.
# A third try, 5a's data from the phase-4 weights with the image side frozen (`--freeze_params
# 'mixins.eva.*' '*vision*'`, 500 steps at peak lr 5e-5 of a 1,000-step cosine), still lost grounding
# (36->28 held-out, 17->8 CI) and colour (180->172) while learning the reply (189/200): the boxes depend on
# the language side too. Next to try: a per-sample loss average, a shorter reply, grounding-only tuning.
set -euo pipefail
work=${1:?usage: $0 WORK_DIR [PHASE4_WEIGHTS]}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$work"
phase4=${2:-run}
export OMP_NUM_THREADS=1
common=(--nproc 2 --version chat_old --micro_batch_size 8 --weight_decay 0.01 --gradient_clipping 1.0
        --lr_decay_style cosine --min_lr_ratio 0.1 --zero_stage 0 --fp32 --full --no_lora
        --log_interval 25 --no_progress_bar)
# Phase 5a: the phase 2-4 mix plus 28,000 off-topic questions and 30,000 multi-turn ones; the run reads
# its first 25,600 samples (about 14% off-topic and 15% multi-turn; 123 too long for 224 are skipped).
cogvlm mix-data train --output train/phase5_all.jsonl --seed 5 --weight grounding=2 --weight text=2 \
    --weight color=0.5 --weight count=0.5 --weight caption=0.5 --unanswerable 28000 --multi_turn 30000
head -25600 train/phase5_all.jsonl > train/phase5.jsonl
cogvlm finetune "${common[@]}" --max_length 224 --save_interval 400 --from_pretrained "$phase4" \
    --save run5 --train_data train/phase5.jsonl --train_iters 1600 --lr 5e-5 --warmup 0.03 --seed 2028
# Phase 5b: short answers (colour, count) x2, grounding x3, about 6% off-topic and 10% multi-turn, at a
# lower rate; the run reads its first 28,800 samples.
cogvlm mix-data train --output train/phase5b_all.jsonl --seed 7 --weight grounding=3 --weight text=1 \
    --weight color=2 --weight count=2 --weight caption=0.5 --unanswerable 15000 --multi_turn 25000
head -28800 train/phase5b_all.jsonl > train/phase5b.jsonl
cogvlm finetune "${common[@]}" --max_length 256 --save_interval 600 --from_pretrained run5 --save run5b \
    --train_data train/phase5b.jsonl --train_iters 1800 --lr 2e-5 --warmup 0.03 --seed 2029
cogvlm convert --from_pretrained run5b --output candidate --to sat --dtype fp16 --overwrite
cp "$repo/cogvlm/embedded/model/generation_config.json" candidate/
cogvlm dialogue-data heldout --output heldout-dialogue --unanswerable 200 --multi_turn 300 --seed 6
cogvlm eval-synthetic --from_pretrained candidate --data heldout
cogvlm eval-synthetic --from_pretrained candidate --data heldout-dialogue
