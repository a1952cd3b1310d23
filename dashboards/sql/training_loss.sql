-- title: Training loss
-- order: 11
-- description: Per-step training loss and learning rate of the latest train version (the training run).
-- chart: line x=step y=loss
-- empty: run `quarry run train datasets_cfg/tiny.yaml`
SELECT step, loss, lr, tokens_per_s
FROM {view:train}
ORDER BY step
