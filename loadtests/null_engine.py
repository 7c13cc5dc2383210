"""An engine step that costs nothing: a logit of 0 for every row, returned at once.

Only for ``make bench``'s host ceiling (``loadtests.host_ceiling`` copies it over the engine's model.py
in a throw-away repository under build/bench/): with it, what is left of the ensemble's cost is what the
tokenizer, Triton, the python backend and the gateway put on any engine, a GPU's included. Never served.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().shape[0]
            logits = pb_utils.Tensor("logits", np.zeros((rows, 1), dtype=np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[logits]))
        return responses
