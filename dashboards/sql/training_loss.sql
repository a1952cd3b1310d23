-- title: Training loss and learning rate
-- order: 11
-- description: Per-step training loss (left axis) and learning rate (dashed, right axis) of the latest train version (the training run).
-- chart: line x=step y=loss y2=lr
-- empty: run `quarry run train datasets_cfg/tiny.yaml`
SELECT step, loss, lr, tokens_per_s
FROM {view:train}
ORDER BY step
