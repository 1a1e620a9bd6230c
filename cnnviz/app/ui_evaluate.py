"""The Gradio side of judging maps: the Explain tab's Evaluate action and the Sanity check tab.

`cnnviz.app.ui.build` calls `EvaluatePanel` inside the Explain tab and `sanity_tab` for a tab of its
own. The sanity check gets its own tab rather than a section of Explain: it has its own limits (at
most `MAX_SANITY_METHODS` methods, one `explain` per randomization step, seconds to tens of seconds),
its own reading (one row of maps per method, one column per step, too wide for Explain's output
column) and always uses the model's default layer. The computing lives in
`cnnviz.app.evaluation`; the handlers run under the app's limits through `widgets.user_errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

import cnnviz
from cnnviz.app import evaluation, widgets
from cnnviz.app import settings as core

if TYPE_CHECKING:
    from cnnviz.app.ui import App

EVALUATE_INTRO = (
    "Judge the maps shown above: how fast the class probability falls when the pixels each map ranks "
    "highest are removed (**deletion**), how fast it rises when they are restored onto a blurred copy "
    "(**insertion**), and, for the CAM family, **Average Drop / Increase in Confidence**. Costs about "
    "2 × steps forwards per method; it is not run with a plain Explain."
)


class Judge:
    """The handlers; `pool` and `settings` let `widgets.user_errors` apply the app's time budget and
    clean-up after a failure, as for the Explain and Compare handlers."""

    def __init__(self, app: App):
        self.app = app
        self.pool = app.pool
        self.settings = app.settings

    def evaluate(
        self,
        image: Image.Image | None,
        model_name: str,
        methods: list[str],
        target: str,
        layer: str,
        steps: float,
        *param_values: Any,
        progress=widgets.PROGRESS,
    ):
        """Deletion/insertion curves, and a table of every metric with its direction, for the maps
        that Explain shows with these inputs (same methods, target, layer and parameters)."""
        picture = core.prepare_image(image)
        chosen = evaluation.check_methods(methods, evaluation.MAX_EVALUATE_METHODS, "evaluate")
        count = evaluation.check_steps(steps)
        params = core.request_params(chosen, param_values, self.settings)  # as /explain
        model, lock = self.app.model(model_name, progress)
        target_idx = core.parse_target(target, model.class_names)
        layer_name = core.parse_layer(layer, model.anatomy)
        with lock:
            view = evaluation.evaluate_one(
                model,
                picture,
                chosen,
                target_idx,
                layer_name,
                count,
                params,
                lambda f, what: progress(f, desc=what),
            )
        curves = self.app.archives.save_png(view.curves, f"cnnviz-evaluate-{model.name}")
        return curves, view.table, view.scores

    def on_model(self, model_name: str, selected: list[str] | None):
        """A model was chosen on the Sanity tab: mark the methods that do not apply to it."""
        model, _ = self.app.model(model_name)
        choices, refused = core.method_status(model.anatomy, model.default_layer)
        return gr.update(choices=choices, value=core.kept_methods(selected, refused))

    def sanity(
        self,
        image: Image.Image | None,
        model_name: str,
        methods: list[str],
        target: str,
        steps: float,
        progress=widgets.PROGRESS,
    ):
        """Cascading model randomization on a copy of the model: the maps after each step, the
        rank-correlation curves, and what they mean."""
        picture = core.prepare_image(image)
        chosen = evaluation.check_methods(methods, evaluation.MAX_SANITY_METHODS, "check")
        count = evaluation.check_steps(steps, 1, evaluation.MAX_SANITY_STEPS, "randomization steps")
        lowered = core.bounded_params(chosen, {}, self.settings)
        if lowered:  # every step runs the registry's defaults: they must be within this server's limits
            names = ", ".join(cnnviz.get_method(m).label for m in lowered)
            raise ValueError(f"{names}: the defaults are above this server's limits; choose other methods")
        model, lock = self.app.model(model_name, progress)
        target_idx = core.parse_target(target, model.class_names)
        with lock:
            view = evaluation.sanity_one(
                model, picture, chosen, target_idx, count, lambda f, what: progress(f, desc=what)
            )
        strip = self.app.archives.save_png(view.strip, f"cnnviz-sanity-{model.name}")
        curves = self.app.archives.save_png(view.curves, f"cnnviz-sanity-curves-{model.name}")
        return strip, curves, view.text, view.correlations


class EvaluatePanel:
    """The Evaluate action, inside the Explain tab's output column (closed: off by default)."""

    def __init__(self) -> None:
        title = "Evaluate the maps: deletion, insertion, Average Drop"
        with gr.Accordion(title, open=False, elem_id="cnnviz-evaluate-panel"):
            gr.Markdown(EVALUATE_INTRO)
            with gr.Row(equal_height=True):
                self.steps = gr.Slider(
                    2,
                    evaluation.MAX_STEPS,
                    value=evaluation.DEFAULT_STEPS,
                    step=1,
                    label="Deletion/insertion steps",
                    info=f"Pixels removed or restored in this many steps (2 to {evaluation.MAX_STEPS})",
                    elem_id="cnnviz-eval-steps",
                )
                self.button = gr.Button("Evaluate", variant="secondary", elem_id="cnnviz-evaluate")
            self.curves = gr.Image(
                label="Deletion and insertion curves",
                show_label=False,  # the label (the API's name) would hide the title
                type="pil",
                format="png",
                interactive=False,
                elem_id="cnnviz-eval-curves",
            )
            self.table = gr.Markdown(label="Scores table", elem_id="cnnviz-eval-table")
            with gr.Accordion("Scores as JSON", open=False):
                self.scores = gr.JSON(label="Scores", elem_id="cnnviz-eval-scores")

    def wire(self, app: App, explain_inputs: list, explain_outputs: list) -> None:
        """Evaluate clears the old result, explains (so that the maps judged are the maps shown),
        then judges them; `/evaluate` alone is the named endpoint."""
        judge = Judge(app)
        image, model, methods, target, layer, *_style = explain_inputs[:7]
        params = explain_inputs[7:]
        outputs = [self.curves, self.table, self.scores]
        # Scores of other inputs than the ones shown would mislead: a change clears them.
        gr.on(
            [c.change for c in (image, model, methods, target, layer, *params)],
            lambda: (None, "", None),
            None,
            outputs,
            api_visibility="private",
            queue=False,
            show_progress="hidden",
        )
        self.button.click(
            lambda: (None, "", None), None, outputs, api_visibility="private", queue=False
        ).then(
            widgets.user_errors(app.explain),
            explain_inputs,
            explain_outputs,
            api_visibility="undocumented",
            concurrency_id=widgets.MODEL_EVENTS,
        ).success(
            widgets.user_errors(judge.evaluate),
            [image, model, methods, target, layer, self.steps, *params],
            outputs,
            api_name="evaluate",
            concurrency_id=widgets.MODEL_EVENTS,
            show_progress_on=[self.curves],
        )


def sanity_tab(app: App) -> None:
    """Image, model, up to `MAX_SANITY_METHODS` methods, steps; the strip, the curves, the reading."""
    methods = cnnviz.list_methods()
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            image = widgets.image_input(app.gate, label="Image", height=260, elem_id="cnnviz-sanity-image")
            gr.Examples(core.example_paths(), inputs=[image], cache_examples=False, label="Examples")
            model = widgets.model_dropdown(app.settings, "Model", value=app.settings.default_model)
            chosen = gr.CheckboxGroup(
                [(m.label, m.id) for m in methods],
                value=[m for m in evaluation.SANITY_DEFAULTS if m in {x.id for x in methods}],
                label=f"Methods (at most {evaluation.MAX_SANITY_METHODS})",
                info="Each randomization step explains every chosen method again; n/a: does not apply",
                elem_id="cnnviz-sanity-methods",
            )
            target = gr.Dropdown(
                [core.TOP1],
                value=core.TOP1,
                label="Target class",
                info="Top-1 of the trained model by default, kept for every step; or a class index or name",
                allow_custom_value=True,
            )
            steps = gr.Slider(
                1,
                evaluation.MAX_SANITY_STEPS,
                value=evaluation.MAX_SANITY_STEPS,
                step=1,
                label="Randomization steps",
                info="Classifier first, then each stage down to the stem (more than the model has: all)",
            )
            run = gr.Button("Run the sanity check", variant="primary", elem_id="cnnviz-sanity")
        with gr.Column(scale=3, min_width=360):
            strip = gr.Image(
                label="Maps as the network is randomized",
                show_label=False,
                type="pil",
                format="png",
                interactive=False,
                elem_id="cnnviz-sanity-strip",
            )
            curves = gr.Image(
                label="Rank correlation with the trained map",
                show_label=False,
                type="pil",
                format="png",
                interactive=False,
                elem_id="cnnviz-sanity-curves",
            )
            text = gr.Markdown(evaluation.SANITY_MEANING, label="What it means", elem_id="cnnviz-sanity-text")
            with gr.Accordion("Correlations as JSON", open=False):
                correlations = gr.JSON(label="Correlations")
    judge = Judge(app)
    model.change(
        widgets.user_errors(judge.on_model),
        [model, chosen],
        [chosen],
        api_visibility="undocumented",
        concurrency_id=widgets.MODEL_EVENTS,
        show_progress="hidden",
    )
    outputs = [strip, curves, text, correlations]
    blank = (None, None, evaluation.SANITY_MEANING, None)
    gr.on(  # a result of other inputs than the ones shown would mislead
        [c.change for c in (image, model, chosen, target, steps)],
        lambda: blank,
        None,
        outputs,
        api_visibility="private",
        queue=False,
        show_progress="hidden",
    )
    run.click(lambda: blank, None, outputs, api_visibility="private", queue=False).then(
        widgets.user_errors(judge.sanity),
        [image, model, chosen, target, steps],
        outputs,
        api_name="sanity",
        concurrency_id=widgets.MODEL_EVENTS,
        show_progress_on=[strip],
    )
