//! Saving and restoring a chosen subset of a module's parameters by path.
//!
//! A PEFT run only changes a few parameters (the prefix encoder and the head); its checkpoint
//! holds those and nothing else, keyed by module path (`prompt_encoder.embedding.weight`,
//! `classifier.weight`), and is applied on top of the pretrained model it was trained from.

use std::collections::BTreeMap;

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::weights::RawTensor;

/// A parameter's path as this project names it: module field names joined by dots. An enum
/// module (one of several kinds, e.g. [`crate::peft::PeftModule`]) stands in its field's place
/// under its variant's snake_case name, so `peft: Some(PeftModule::PrefixEncoder(..))` is
/// `prefix_encoder.*`, as peft and the adapter files name it.
#[derive(Debug, Default)]
pub struct ModulePath {
    segments: Vec<String>,
    /// Per entered module: the field segment an enum variant replaced.
    replaced: Vec<Option<String>>,
}

impl ModulePath {
    /// Call from [`ModuleVisitor::enter_module`] / [`ModuleMapper::enter_module`].
    pub fn enter(&mut self, name: &str, container_type: &str) {
        if container_type.starts_with("Enum:") {
            let field = self.segments.pop();
            self.segments.push(snake_case(name));
            self.replaced.push(field);
        } else {
            self.segments.push(name.to_string());
            self.replaced.push(None);
        }
    }

    /// Call from `exit_module`.
    pub fn exit(&mut self) {
        self.segments.pop();
        if let Some(Some(field)) = self.replaced.pop() {
            self.segments.push(field);
        }
    }

    pub fn path(&self) -> String {
        self.segments.join(".")
    }
}

/// `PrefixEncoder` -> `prefix_encoder`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

struct Collector<'a, F> {
    stack: ModulePath,
    select: &'a F,
    out: BTreeMap<String, RawTensor>,
}

impl<F: Fn(&str) -> bool> ModuleVisitor for Collector<'_, F> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let path = self.stack.path();
        if (self.select)(&path) {
            let t = RawTensor::from_tensor(param.val()).expect("float parameters read as f32");
            self.out.insert(path, t);
        }
    }
}

/// A module path of this project -> the HuggingFace checkpoint key of the same tensor. Module
/// names mirror HF's except where Rust or Burn forbid it (`self`, LayerNorm's `gamma`/`beta`).
pub fn hf_key(path: &str) -> String {
    path.replace(".attention.self_attn.", ".attention.self.")
        .replace("layer_norm.gamma", "LayerNorm.weight")
        .replace("layer_norm.beta", "LayerNorm.bias")
}
/// Float parameters of `module` whose path satisfies `select`, as host tensors.
pub fn collect<M: Module>(
    module: &M,
    select: impl Fn(&str) -> bool,
) -> BTreeMap<String, RawTensor> {
    let mut c = Collector {
        stack: ModulePath::default(),
        select: &select,
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Every float parameter path of `module` with its shape.
pub fn shapes<M: Module>(module: &M) -> BTreeMap<String, Vec<usize>> {
    struct Shapes(ModulePath, BTreeMap<String, Vec<usize>>);
    impl ModuleVisitor for Shapes {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.0.enter(name, container_type);
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.1
                .insert(self.0.path(), param.lazy_shape().dims::<D>().to_vec());
        }
    }
    let mut s = Shapes(ModulePath::default(), BTreeMap::new());
    module.visit(&mut s);
    s.1
}

/// (selected, total) parameter counts of `module`: with a method's `is_trainable`, peft's
/// "trainable params || all params".
pub fn counts<M: Module>(module: &M, selected: impl Fn(&str) -> bool) -> (usize, usize) {
    shapes(module)
        .iter()
        .fold((0, 0), |(sel, all), (path, shape)| {
            let n = shape.iter().product::<usize>();
            (sel + if selected(path) { n } else { 0 }, all + n)
        })
}

struct Loader<'a> {
    stack: ModulePath,
    tensors: &'a BTreeMap<String, RawTensor>,
    used: Vec<String>,
    problems: Vec<String>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.stack.enter(name, container_type);
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.stack.path();
        let Some(raw) = self.tensors.get(&path) else {
            return param;
        };
        self.used.push(path.clone());
        let expected = param.lazy_shape().dims::<D>().to_vec();
        if raw.shape != expected {
            self.problems.push(format!(
                "`{path}` has shape {:?}, the model expects {expected:?}",
                raw.shape
            ));
            return param;
        }
        param.map(|t| {
            let device = t.device();
            let require_grad = t.is_require_grad();
            raw.to_tensor::<D>(&device).set_require_grad(require_grad)
        })
    }
}

/// Replaces the parameters of `module` named in `tensors`. Every tensor must name a parameter of
/// the module with the same shape; the error lists all that do not.
pub fn apply<M: Module>(
    module: M,
    tensors: &BTreeMap<String, RawTensor>,
) -> std::result::Result<M, String> {
    let mut loader = Loader {
        stack: ModulePath::default(),
        tensors,
        used: Vec::new(),
        problems: Vec::new(),
    };
    let module = module.map(&mut loader);
    let mut problems = loader.problems;
    for key in tensors.keys() {
        if !loader.used.contains(key) {
            problems.push(format!("`{key}` is not a parameter of this model"));
        }
    }
    if problems.is_empty() {
        Ok(module)
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;

    #[derive(Module, Debug)]
    struct Net {
        layers: Vec<burn::nn::Linear>,
        head: Option<burn::nn::Linear>,
    }

    #[test]
    fn paths_collect_and_apply() {
        let device = Device::default();
        let net = Net {
            layers: vec![LinearConfig::new(2, 3).init(&device)],
            head: Some(LinearConfig::new(3, 1).init(&device)),
        };
        let all: Vec<String> = shapes(&net).into_keys().collect();
        assert_eq!(
            all,
            [
                "head.bias",
                "head.weight",
                "layers.0.bias",
                "layers.0.weight"
            ]
        );
        let head = collect(&net, |p| p.starts_with("head."));
        assert_eq!(
            head.keys().collect::<Vec<_>>(),
            ["head.bias", "head.weight"]
        );

        let mut changed = head.clone();
        changed.get_mut("head.weight").unwrap().data = vec![7.0, 8.0, 9.0];
        let net = apply(net, &changed).unwrap();
        let w: Vec<f32> = net
            .head
            .as_ref()
            .unwrap()
            .weight
            .val()
            .into_data()
            .try_to_vec()
            .unwrap();
        assert_eq!(w, [7.0, 8.0, 9.0]);

        let mut bad = changed.clone();
        bad.insert("head.nope".into(), RawTensor::new(vec![1], vec![0.0]));
        bad.get_mut("head.bias").unwrap().shape = vec![2];
        let err = apply(net, &bad).unwrap_err();
        assert!(
            err.contains("`head.bias` has shape [2], the model expects [1]"),
            "{err}"
        );
        assert!(err.contains("`head.nope` is not a parameter"), "{err}");
    }
}
