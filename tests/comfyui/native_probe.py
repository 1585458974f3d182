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
            loaded.append(
                {
                    "class": type(inner).__name__,
                    "size": patcher.model_size(),
                    "param_bytes": params,
                    "loaded": patcher.loaded_size(),
                    "device": str(lm.device),
                }
            )
        to = model.model_options.get("transformer_options", {})
        patches = {
            k: [
                type(p).__name__ if not isinstance(p, tuple) else [getattr(x, "__name__", type(x).__name__) for x in p]
                for p in v
            ]
            for k, v in to.get("patches", {}).items()
        }
        info = {
            "loaded": loaded,
            "rss": psutil.Process().memory_info().rss,
            "patches": patches,
            "object_patches": sorted(model.object_patches),
            "additional": sorted(model.additional_models),
            "wrappers": {k: sorted(v) for k, v in model.wrappers.items() if v},
        }
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


def _partial_patcher_class(base, budget):
    """A ModelPatcher class that ComfyUI's model management always loads partially, within ``budget`` bytes.

    On a --cpu server ``load_models_gpu`` asks for a full load (``partially_load(device, 1e32)``); this caps the
    extra memory so the patch goes through the low-VRAM branch of ``ModelPatcher.load`` as on a small GPU.
    """

    class PartialPatcher(base):
        sspir_test_budget = budget

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False):
            extra = min(extra_memory, self.sspir_test_budget - self.loaded_size())
            return super().partially_load(device_to, extra, force_patch_weights=force_patch_weights)

    return PartialPatcher


class SSPIRTestPartialLoad:
    """A fresh copy of an SSP-IR patch, loaded partially by ComfyUI, and its outputs fully vs partially loaded.

    Runs ``ModelPatcher.load`` on the copy twice, fully then with ``budget_mb``, and computes the Refine
    embedding, Processor features, ControlNet residuals and every SSP-IR attention on fixed seeded inputs after
    each; writes them (``full.*``, ``partial.*``) and what ComfyUI did (sizes, which layers it loaded or left to
    the casting path, which ran through it) to the output folder. The copy it returns is loaded within the same
    budget whenever ComfyUI loads it, so the whole native route can sample under partial loading.
    """

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "sspir_patch": ("SSPIR_PATCH",),
                "budget_mb": ("FLOAT", {"default": 64.0}),
                "name": ("STRING", {"default": "p"}),
            }
        }

    RETURN_TYPES = ("SSPIR_PATCH",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, sspir_patch, budget_mb, name):
        import sys

        import comfy.ops
        from safetensors.torch import save_file

        glue = sys.modules[type(sspir_patch).__module__]  # the pack's nodes/native_patch.py, as the server loaded it
        fresh = glue.load_patch(sspir_patch.source, sspir_patch.module.dtype)  # never alter the cached patch
        patcher, module = fresh.patcher, fresh.module
        device, budget = patcher.load_device, int(budget_mb * 2**20)
        g = torch.Generator().manual_seed(0)
        dtype = module.dtype
        clip_dim = module.refine.config["clip_dim"]
        inputs = {
            "tokens": torch.randn(1, 256, clip_dim, generator=g),
            "lq": torch.rand(1, 3, 32, 32, generator=g),
            "x": torch.randn(2, 4, 4, 4, generator=g),
            "t": torch.tensor([500.0, 500.0]),
            "context": torch.randn(2, 77, module.unet_config["cross_attention_dim"], generator=g),
        }
        hs = {
            site.key: torch.randn(2, module.attention(site.key).in_channels, 2, 2, generator=g) for site in module.sites
        }

        def outputs():
            with torch.no_grad():
                emb = module.image_embedding(inputs["tokens"].to(device))
                feats = module.structure(inputs["lq"].to(device, dtype))
                downs, mid = module.control(
                    inputs["x"].to(device, dtype),
                    inputs["t"].to(device),
                    inputs["context"].to(device, dtype),
                    emb,
                    feats,
                    1.0,
                )
                out = {"emb": emb, "feats": feats, "mid": mid, **{f"down{i}": d for i, d in enumerate(downs)}}
                for site in module.sites:
                    ctx = emb if site.kind == "image" else downs[site.residual]
                    out[f"attend.{site.key}"] = module.attend(site.key, hs[site.key].to(device, dtype), ctx)
            return out

        cast_calls = []
        original = comfy.ops.cast_bias_weight

        def spy(s, *args, **kwargs):  # forward_comfy_cast_weights looks the function up in comfy.ops each call
            cast_calls[-1].add(id(s))
            return original(s, *args, **kwargs)

        layers = {id(m): n for n, m in module.named_modules() if list(m.parameters(recurse=False))}
        info = {
            "model_size": patcher.model_size(),
            "budget": budget,
            "layers": len(layers),
            "layers_not_cast_ops": sorted(
                n for n, m in module.named_modules() if id(m) in layers and not hasattr(m, "comfy_cast_weights")
            ),
        }
        results = {}
        comfy.ops.cast_bias_weight = spy
        try:
            for tag, kwargs in (("full", {"full_load": True}), ("partial", {"lowvram_model_memory": budget})):
                patcher.load(device, **kwargs)
                cast_calls.append(set())
                results[tag] = outputs()
                cast = sorted(
                    layers[id(m)]
                    for m in module.modules()
                    if id(m) in layers and getattr(m, "comfy_cast_weights", False)
                )
                loaded = [layers[id(m)] for m in module.modules() if getattr(m, "comfy_patched_weights", False)]
                info[tag] = {
                    "loaded_size": patcher.loaded_size(),
                    "cast_layers": cast,
                    "loaded_layers": len(loaded),
                    "cast_layers_run": sorted(layers[i] for i in cast_calls[-1] if i in layers),
                    "lowvram": bool(module.model_lowvram),
                }
                patcher.detach()
        finally:
            comfy.ops.cast_bias_weight = original
        info["after_detach_cast_layers"] = sum(bool(getattr(m, "comfy_cast_weights", False)) for m in module.modules())
        save_file(
            {f"{tag}.{k}": v.float().contiguous().cpu() for tag, out in results.items() for k, v in out.items()},
            _out(name, "safetensors"),
        )
        with open(_out(name, "json"), "w") as f:
            json.dump(info, f)
        patcher.__class__ = _partial_patcher_class(type(patcher), budget)
        return (fresh,)


class SSPIRTestHostProbes:
    """What the pack's probes find in this ComfyUI: the control contract on the host's own UNet (also with a
    broken ``apply_control``, popping from the front), the V3 API module and progress mechanism, the patcher
    class, and a MultiGPU deep clone of a fresh SSP-IR patcher (on the CPU) where the host has them."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sspir_patch": ("SSPIR_PATCH",), "name": ("STRING", {"default": "h"})}}

    RETURN_TYPES = ()
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def probe(self, sspir_patch, name):
        import dataclasses
        import importlib
        import sys

        import comfy.ldm.modules.diffusionmodules.openaimodel as openai

        glue = sys.modules[type(sspir_patch).__module__]  # the pack's nodes/native_patch.py, as the server loaded it
        package = glue.__name__.rsplit(".", 1)[0]
        contract = importlib.import_module(package + ".native_contract")
        api = importlib.import_module(package + ".api")
        info = {"landing": dataclasses.asdict(contract.probe_landing())}
        contract.check_control_contract(fresh=True)  # raises if the contract changed
        original = openai.apply_control

        def front_first(h, control, name):
            if control is not None and name in control and len(control[name]) > 0:
                ctrl = control[name].pop(0)
                if ctrl is not None and ctrl.shape == h.shape:
                    h += ctrl
            return h

        openai.apply_control = front_first
        try:
            broken = contract.probe_landing()
        finally:
            openai.apply_control = original
        info["broken_problems"] = contract.landing_problems(broken, contract.assumed_landing(len(broken.input)))
        info["api_module"] = api.API.__name__
        info["progress"] = type(api.progress_bar()).__name__
        fresh = glue.load_patch(sspir_patch.source, sspir_patch.module.dtype)  # never alter the cached patch
        info["patcher_class"] = type(fresh.patcher).__name__
        info["has_cached_patcher_init"] = getattr(fresh.patcher, "cached_patcher_init", None) is not None
        info["has_deepclone"] = hasattr(fresh.patcher, "deepclone_multigpu")
        if info["has_deepclone"]:
            copy = fresh.patcher.deepclone_multigpu(new_load_device=torch.device("cpu"))
            info["copy_registered"] = sorted(fresh.copies)
            info["copy_is_fresh"] = copy.model is not fresh.module
            a, b = fresh.module.state_dict(), copy.model.state_dict()
            info["copy_equal"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            info["copy_used_for_cpu"] = fresh.module_for(torch.device("cpu")) is fresh.module
        with open(_out(name, "json"), "w") as f:
            json.dump(info, f)
        return {}


NODE_CLASS_MAPPINGS = {
    "SSPIRTestSaveTensor": SSPIRTestSaveTensor,
    "SSPIRTestReport": SSPIRTestReport,
    "SSPIRTestAddPatches": SSPIRTestAddPatches,
    "SSPIRTestPartialLoad": SSPIRTestPartialLoad,
    "SSPIRTestHostProbes": SSPIRTestHostProbes,
}
