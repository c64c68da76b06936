"""Effect estimation: the effect of thickness on intensity, three ways, against the benchmark's ground truth,
then an image-level effect from the bundled pipeline's counterfactual images against the renderer's.

Run:  python examples/effect_estimation.py        (2.5 CPU-minutes; 5 minutes wall on a busy 2-core machine)

The benchmark's equations (docs/benchmark.md):  t = 0.5 + Gamma(10, 5),  i = 64 + 191 * sigmoid(0.5 e + 2 t - 5).
The effect is E[i | do(t = 3)] - E[i | do(t = 2)].

1. Ground truth, from the equations: 191 * (E sigmoid(1 + 0.5 e) - E sigmoid(-1 + 0.5 e)), e ~ N(0, 1), by
   Gauss-Hermite quadrature.
2. dowhy, on observational data: identify (backdoor), estimate, refute. The outcome model is a logistic GLM of
   i's position in [64, 255], matching the sigmoid equation (a linear model is printed too, for contrast).
3. The SCM's interventional ATE: a Pyro SCM with learnable flows, fitted on the same observational data;
   interval from a bootstrap over refits.
4. Image level: counterfactual images of held-out test digits under do(t = 3) and do(t = 2) from the bundled
   pipeline, their measured intensity and stroke area, against the same digits re-rendered by the
   benchmark's renderer under both interventions.
"""
import numpy as np
import statsmodels.api as sm
import torch
from scipy.special import expit

from pipeline import CounterfactualPipeline
from pipeline.datasets import MorphoMNIST
from pipeline.datasets import morpho_equations as eq
from pipeline.effects import compare_effects, effect_from_images, image_effect, morpho_true_effect
from scm import SCM, CausalGraph
from scm.effects import estimate_effect

torch.set_num_threads(1)
CONTROL, TREATED = 2.0, 3.0
N_OBS, N_BOOT, N_UNITS = 5000, 30, 64


def inside(ci, value):
    return "yes" if ci[0] <= value <= ci[1] else "NO"


# ---------------------------------------------------------------------------------------------- 1. ground truth
nodes, weights = np.polynomial.hermite_e.hermegauss(80)  # E f(e), e ~ N(0, 1)
weights = weights / weights.sum()
truth = eq.I_SPAN * float(np.sum(weights * (expit(0.5 * nodes + 2 * TREATED - 5)
                                            - expit(0.5 * nodes + 2 * CONTROL - 5))))

# ---------------------------------------------------------------------------------------------- observational data
noise = eq.sample_noise(N_OBS, torch.Generator().manual_seed(0))
t = eq.thickness_from_noise(noise["u_t"])
i = eq.intensity_from(t, noise["e_i"])
graph = CausalGraph.from_dict({"nodes": {"thickness": {"kind": "positive"},
                                         "intensity": {"kind": "interval", "low": 64, "high": 255}},
                               "edges": [["thickness", "intensity"]]})

# ---------------------------------------------------------------------------------------------- 2. dowhy
# The logistic GLM models the intensity's position in its interval, (i - 64) / 191; the effect scales back.
scaled = CausalGraph.from_dict({"nodes": {"thickness": {"kind": "positive"},
                                          "intensity": {"kind": "interval", "low": 0, "high": 1}},
                                "edges": [["thickness", "intensity"]]})
glm = estimate_effect(scaled, {"thickness": t, "intensity": (i - eq.I_LOW) / eq.I_SPAN}, "thickness", "intensity",
                      method="backdoor.generalized_linear_model", control_value=CONTROL, treatment_value=TREATED,
                      refuters=("placebo_treatment_refuter",), num_simulations=20,
                      method_params={"init_params": {"glm_family": sm.families.Binomial()}})
dowhy_value = eq.I_SPAN * glm.value
dowhy_ci = tuple(eq.I_SPAN * c for c in glm.confidence_interval)
linear = estimate_effect(graph, {"thickness": t, "intensity": i}, "thickness", "intensity", refuters=(),
                         control_value=CONTROL, treatment_value=TREATED)

# ---------------------------------------------------------------------------------------------- 3. the SCM's ATE
data = {"thickness": t.float(), "intensity": i.float()}


def scm_ate(rows, seed):
    scm = SCM(graph, seed=seed)
    scm.fit({k: v[rows] for k, v in data.items()}, epochs=30, progress=False, seed=seed)
    return float(scm.average_causal_effect("intensity", {"thickness": TREATED}, {"thickness": CONTROL},
                                           n=50000, seed=0))


scm_value = scm_ate(torch.arange(N_OBS), 0)
boot = [scm_ate(torch.randint(0, N_OBS, (N_OBS,), generator=torch.Generator().manual_seed(100 + b)), b + 1)
        for b in range(N_BOOT)]
half = 1.96 * float(np.std(boot, ddof=1))
scm_ci = (scm_value - half, scm_value + half)

print(f"Effect of do(thickness: {CONTROL:g} -> {TREATED:g}) on intensity")
print(f"  {'estimate':52s} {'value':>7s}   95% CI            truth inside")
print(f"  {'ground truth (benchmark equations, quadrature)':52s} {truth:7.2f}")
print(f"  {'dowhy backdoor, logistic GLM (observational, n=' + str(N_OBS) + ')':52s} {dowhy_value:7.2f}   "
      f"[{dowhy_ci[0]:.2f}, {dowhy_ci[1]:.2f}]    {inside(dowhy_ci, truth)}")
print(f"  {'SCM interventional ATE (flows fitted, ' + str(N_BOOT) + ' bootstraps)':52s} {scm_value:7.2f}   "
      f"[{scm_ci[0]:.2f}, {scm_ci[1]:.2f}]    {inside(scm_ci, truth)}")
print(f"  adjustment set {list(glm.adjustment_set)}; placebo refuter "
      f"{'passed' if glm.refutations['placebo_treatment_refuter'].passed else 'FAILED'} "
      f"(placebo effect {eq.I_SPAN * glm.refutations['placebo_treatment_refuter'].new_effect:.2f})")
print(f"  for contrast, a linear outcome model (misspecified for the sigmoid): {linear.value:.2f} "
      f"[{linear.confidence_interval[0]:.2f}, {linear.confidence_interval[1]:.2f}], truth inside: "
      f"{inside(linear.confidence_interval, truth)}")

# ---------------------------------------------------------------------------------------------- 4. image level
pipe = CounterfactualPipeline.pretrained()
test = MorphoMNIST("test", max_sources=N_UNITS, progress=False, n_jobs=1)
units = torch.arange(N_UNITS)
x, parents = test.images[units], {k: v[units] for k, v in test.attributes.items()}
do, control = {"thickness": TREATED}, {"thickness": CONTROL}
est = image_effect(pipe, x, parents, do, "intensity", control=control, steps=20, seed=0)
true_i = morpho_true_effect(test, units, do, "intensity", control=control)
area = effect_from_images(est.images, est.baseline_images, "stroke_area", do=do, control=control, source="pipeline")
true_area = morpho_true_effect(test, units, do, "stroke_area", control=control)

print()
print(f"Image level, {N_UNITS} test digits, bundled pipeline ({est.settings['guidance']}, scale "
      f"{est.settings['scale']:g}, {est.settings['steps']} DDIM steps), {est.describe_arms()}:")
for name, e, g in (("measured intensity", est, true_i), ("stroke area (px > 0.5)", area, true_area)):
    print(f"  {name:24s} pipeline {e.value:7.2f} [{e.confidence_interval[0]:.2f}, {e.confidence_interval[1]:.2f}]"
          f"   ground truth (renderer) {g.value:7.2f} [{g.confidence_interval[0]:.2f}, {g.confidence_interval[1]:.2f}]")
    print(f"    {compare_effects(e, g, 'pipeline vs renderer')}")
print(f"  {compare_effects(est, truth, 'image-level intensity vs the attribute-level truth')}")
