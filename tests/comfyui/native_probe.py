"""Test-only ComfyUI nodes (copied into the native test server's custom_nodes as ``sspir_test_probe``).

They read what the HTTP API cannot show: float images before the 8-bit PNG, the loaded-models list of
ComfyUI's model management, the patches on a MODEL. Never part of the pack.
"""

import json
import os

import torch


def _out(name, ext):
    import folder_paths

    return os.path.join(folder_paths.get_output_directory(), f"{name}.{ext}")


class SSPIRTestSaveTensor:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "name": ("STRING", {"default": "x"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def save(self, image, name):
        from safetensors.torch import save_file

        save_file({"image": image.float().contiguous().cpu()}, _out(name, "safetensors"))
        return {}


class SSPIRTestReport:
    """Loaded models, process memory and the MODEL's patches after the image is made."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",), "model": ("MODEL",), "name": ("STRING", {"default": "r"})}}

    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def report(self, image, model, name):
        import comfy.model_management as mm
        import psutil

        loaded = []
        for lm in mm.current_loaded_models:
            patcher = lm.model
            inner = getattr(patcher, "model", None)
            params = sum(p.numel() * p.element_size() for p in inner.parameters()) if inner is not None else 0
            loaded.append({"class": type(inner).__name__, "size": patcher.model_size(), "param_bytes": params,
                           "loaded": patcher.loaded_size(), "device": str(lm.device)})
        to = model.model_options.get("transformer_options", {})
        patches = {k: [type(p).__name__ if not isinstance(p, tuple) else [getattr(x, "__name__", type(x).__name__)
                                                                           for x in p] for p in v]
                   for k, v in to.get("patches", {}).items()}
        info = {"loaded": loaded, "rss": psutil.Process().memory_info().rss, "patches": patches,
                "object_patches": sorted(model.object_patches), "additional": sorted(model.additional_models),
                "wrappers": {k: sorted(v) for k, v in model.wrappers.items() if v}}
        with open(_out(name, "json"), "w") as f:
            json.dump(info, f)
        return {}


class SSPIRTestAddPatches:
    """Stands in for another pack (IPAdapter-style attn2 patch, a forward_timestep_embed patch, a wrapper)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "add"
    CATEGORY = "testing"

    def add(self, model):
        import comfy.patcher_extension

        m = model.clone()

        def other_attn2(q, k, v, extra_options):
            return q, k, v

        class OtherLayer(torch.nn.Module):
            pass

        def other_embed(layer, x, *args):
            return x

        def other_wrapper(executor, *args, **kwargs):
            return executor(*args, **kwargs)

        m.set_model_attn2_patch(other_attn2)
        m.set_model_forward_timestep_embed_patch((OtherLayer, other_embed))
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "other_pack", other_wrapper)
        return (m,)


NODE_CLASS_MAPPINGS = {"SSPIRTestSaveTensor": SSPIRTestSaveTensor, "SSPIRTestReport": SSPIRTestReport,
                       "SSPIRTestAddPatches": SSPIRTestAddPatches}
