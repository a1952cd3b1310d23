-- title: Mixture search: the predicted optimum's weights against the natural and uniform mixtures
-- order: 18
-- description: Per component (a domain, or a k-means cluster), its share of the training tokens in the optimum (the top-100 mean of a large simulated Dirichlet sample ranked by the chosen regression, RegMix sec. 3.3), in the natural mixture (each component's share of the tokens available) and in uniform (equal shares, clipped at availability). cap is the most a component can supply: max_epochs passes over its tokens as a share of the budget (Muennighoff et al. 2023). The optimum is committed as a curated selection with per-component copies and a Megatron blend (mixture_select).
-- chart: bar x=component y=weight color=arm offset=arm
-- empty: run `quarry run mixture datasets_cfg/tiny_mixture.yaml`, then pick its dataset `tiny_mix` in the sidebar
SELECT component, arm, round(weight, 4) AS weight, round(natural_weight, 4) AS natural_weight, round(cap, 4) AS cap
FROM {view:mixture_weights}
WHERE arm IN ('optimum', 'natural', 'uniform')
ORDER BY component, arm
