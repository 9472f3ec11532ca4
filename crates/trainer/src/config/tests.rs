//! Recipe loading: defaults, overrides, inheritance, and every error naming its key.

use super::*;
use bert_model::peft::prompt::Reparameterization;

fn load(text: &str, overrides: &[&str]) -> Result<TrainConfig> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, text).unwrap();
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    TrainConfig::load(&p, &o)
}

#[test]
fn defaults_overrides_and_methods() {
    let c = load(
        "name = \"x\"\n[peft]\nmethod = \"prefix-tuning\"\nnum_virtual_tokens = 8\n",
        &[
            "train.lr=1e-3",
            "model.source=some/hub-id",
            "train.epochs=2",
        ],
    )
    .unwrap();
    assert_eq!(c.train.lr, 1e-3);
    assert_eq!(c.train.epochs, 2);
    assert_eq!(c.train.batch_size, 128);
    assert_eq!(c.model.source, "some/hub-id");
    match &c.peft {
        PeftConfig::PrefixTuning(p) => assert_eq!(p.num_virtual_tokens, 8),
        other => panic!("{other:?}"),
    }
    // The resolved config round-trips through its TOML.
    let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn every_shipped_recipe_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let c = TrainConfig::load(&path, &[]).unwrap();
            assert!(
                c.data.train.is_file(),
                "{}: data.train missing",
                path.display()
            );
            if let Some(l) = &c.data.labels {
                assert!(l.is_file(), "{}: labels missing", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 12, "{n} recipes");
}

#[test]
fn base_recipes_are_inherited_and_peft_replaced() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let default = TrainConfig::load(&dir.join("en-base.toml"), &[]).unwrap();
    let lora = TrainConfig::load(&dir.join("en-lora.toml"), &[]).unwrap();
    assert_eq!(lora.name, "en-lora");
    assert_eq!(lora.data, default.data);
    assert_eq!(lora.model, default.model);
    assert_eq!(lora.train, default.train);
    match &lora.peft {
        PeftConfig::Lora(l) => {
            assert_eq!((l.r, l.lora_alpha, l.lora_dropout), (8, 16.0, 0.1));
            assert_eq!(l.target_modules, ["query", "value"]);
        }
        other => panic!("{other:?}"),
    }
    let full = TrainConfig::load(&dir.join("zh-full.toml"), &[]).unwrap();
    assert_eq!(full.train.epochs, 50);
    assert_eq!(full.train.lr, 2e-5);
    assert_eq!(full.model.source, "hfl/chinese-roberta-wwm-ext");

    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("a.toml"), "base = \"b.toml\"\n").unwrap();
    std::fs::write(tmp.path().join("b.toml"), "base = \"a.toml\"\n").unwrap();
    let e = format!(
        "{:#}",
        TrainConfig::load(&tmp.path().join("a.toml"), &[]).unwrap_err()
    );
    assert!(e.contains("too deep"), "{e}");
    let e = format!(
        "{:#}",
        TrainConfig::load(&dir.join("en-lora.toml"), &["peft.rank=4".into()]).unwrap_err()
    );
    assert!(e.contains("rank"), "{e}");
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let e = format!(
        "{:#}",
        load("[train]\nlerning_rate = 1\n", &[]).unwrap_err()
    );
    assert!(e.contains("lerning_rate"), "{e}");
    let e = format!("{:#}", load("", &["peft.method=lora2"]).unwrap_err());
    assert!(e.contains("lora2"), "{e}");
    let e = format!(
        "{:#}",
        load("[peft]\nmethod = \"prefix-tuning\"\nvirtual = 3\n", &[]).unwrap_err()
    );
    assert!(e.contains("virtual"), "{e}");
    let e = format!("{:#}", load("", &["train.epochs=0"]).unwrap_err());
    assert!(e.contains("train.epochs"), "{e}");
    let e = format!("{:#}", load("", &["train.epochs"]).unwrap_err());
    assert!(e.contains("key=value"), "{e}");
}

#[test]
fn non_finite_and_out_of_range_numbers_are_named() {
    for (set, needle) in [
        ("train.weight_decay=nan", "train.weight_decay"),
        ("train.weight_decay=-1", "train.weight_decay"),
        ("train.lr=nan", "train.lr"),
        ("train.warmup_ratio=nan", "train.warmup_ratio"),
        ("data.valid_fraction=nan", "data.valid_fraction"),
        ("data.max_rows=0", "data.max_rows"),
        ("data.holdout_fraction=1", "data.holdout_fraction"),
        ("data.holdout_fraction=nan", "data.holdout_fraction"),
    ] {
        let e = format!("{:#}", load("", &[set]).unwrap_err());
        assert!(e.contains(needle), "{set}: {e}");
    }
    let lora = "[peft]\nmethod = \"lora\"\n";
    for (set, needle) in [
        ("peft.lora_alpha=nan", "peft.lora_alpha"),
        ("peft.lora_alpha=inf", "peft.lora_alpha"),
        ("peft.lora_dropout=nan", "peft.lora_dropout"),
        ("peft.r=0", "peft.r"),
    ] {
        let e = format!("{:#}", load(lora, &[set]).unwrap_err());
        assert!(e.contains(needle), "{set}: {e}");
    }
    let prefix = "[peft]\nmethod = \"prefix-tuning\"\nprefix_projection = true\n";
    let e = format!(
        "{:#}",
        load(prefix, &["peft.encoder_hidden_size=0"]).unwrap_err()
    );
    assert!(e.contains("peft.encoder_hidden_size"), "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Any recipe text, and any `--set` value: a config or an error naming the file,
    /// never a panic.
    #[test]
    fn any_recipe_loads_or_fails_cleanly(
        text in "(\\[(model|data|peft|train)\\]\n|[a-z_]{1,12} = (\"[a-z0-9./-]{0,8}\"|-?[0-9]{1,4}(\\.[0-9])?|nan|inf|true|\\[\\])\n|method = \"(lora|prefix-tuning|p-tuning|full|x)\"\n|[ -~]{0,12}\n){0,12}",
        set in "[a-z_.]{1,20}=[ -~]{0,10}",
    ) {
        if let Err(e) = load(&text, &[&set]) {
            let e = format!("{e:#}");
            proptest::prop_assert!(e.contains("c.toml") || e.contains("--set"), "{}", e);
        }
    }
}

#[test]
fn run_names_stay_under_runs() {
    for bad in ["../../x", "a/b", "..", ".hidden", "a\\b"] {
        let e = format!("{:#}", load(&format!("name = {bad:?}\n"), &[]).unwrap_err());
        assert!(e.contains("plain directory name"), "{bad}: {e}");
    }
    assert!(load("name = \"en-lora_2\"\n", &[]).is_ok());
}

#[test]
fn setting_another_method_switches_the_peft_table() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let c = TrainConfig::load(&dir.join("en-base.toml"), &["peft.method=lora".into()]).unwrap();
    assert!(matches!(c.peft, PeftConfig::Lora(_)), "{:?}", c.peft);
    let c = TrainConfig::load(
        &dir.join("en-base.toml"),
        &["peft.method=lora".into(), "peft.r=4".into()],
    )
    .unwrap();
    match c.peft {
        PeftConfig::Lora(l) => assert_eq!(l.r, 4),
        other => panic!("{other:?}"),
    }
    // The same method keeps its keys.
    let c = TrainConfig::load(
        &dir.join("en-base.toml"),
        &[
            "peft.num_virtual_tokens=7".into(),
            "peft.method=prefix-tuning".into(),
        ],
    )
    .unwrap();
    match c.peft {
        PeftConfig::PrefixTuning(p) => assert_eq!(p.num_virtual_tokens, 7),
        other => panic!("{other:?}"),
    }
}

#[test]
fn p_tuning_encoder_settings_are_checked() {
    let lstm = "[peft]\nmethod = \"p-tuning\"\nencoder_reparameterization_type = \"lstm\"\n";
    let c = load(lstm, &["peft.encoder_num_layers=1"]).unwrap();
    match &c.peft {
        PeftConfig::PTuning(p) => {
            assert_eq!(p.encoder_reparameterization_type, Reparameterization::Lstm);
            assert_eq!((p.encoder_num_layers, p.encoder_dropout), (1, 0.0));
        }
        other => panic!("{other:?}"),
    }
    let e = format!(
        "{:#}",
        load(lstm, &["peft.encoder_num_layers=0"]).unwrap_err()
    );
    assert!(e.contains("peft.encoder_num_layers"), "{e}");
    let e = format!(
        "{:#}",
        load(lstm, &["peft.encoder_dropout=1.5"]).unwrap_err()
    );
    assert!(e.contains("peft.encoder_dropout"), "{e}");
    // The MLP has no layers setting: refused, not ignored.
    let mlp = "[peft]\nmethod = \"p-tuning\"\n";
    let e = format!(
        "{:#}",
        load(mlp, &["peft.encoder_num_layers=3"]).unwrap_err()
    );
    assert!(e.contains("lstm"), "{e}");
    let e = format!(
        "{:#}",
        load(mlp, &["peft.encoder_reparameterization_type=gru"]).unwrap_err()
    );
    assert!(e.contains("gru"), "{e}");
}

#[test]
fn the_training_device_is_checked_when_the_recipe_loads() {
    let c = load("[train]\ndevice = \"flex\"\n", &[]).unwrap();
    assert_eq!(c.train.device.as_deref(), Some("flex"));
    assert_eq!(load("", &[]).unwrap().train.device, None);
    for bad in ["nonsense", "cuda:x", "flex:1"] {
        let e = format!(
            "{:#}",
            load("", &[&format!("train.device={bad}")]).unwrap_err()
        );
        assert!(e.contains("train.device") && e.contains(bad), "{bad}: {e}");
    }
}

/// A config error is one line that blames its culprit: the `--set` override that made the
/// recipe invalid, or the file when the file itself is.
#[test]
fn config_errors_are_one_line_naming_the_override_or_the_file() {
    let one_line = |r: Result<TrainConfig>| {
        let e = format!("{:#}", r.unwrap_err());
        assert!(!e.contains('\n'), "several lines: {e}");
        e
    };
    let e = one_line(load("[train]\nepochs = 2\n", &["train.epoch=1"]));
    assert!(
        e.starts_with("--set train.epoch=1: `train`: unknown field `epoch`"),
        "{e}"
    );
    assert!(e.contains("`epochs`, `batch_size`"), "{e}");
    assert!(e.ends_with("did you mean `train.epochs`?"), "{e}");
    assert!(!e.contains("c.toml"), "{e}");
    // The culprit among several overrides, wherever it is.
    let e = one_line(load(
        "",
        &["train.lr=1e-3", "train.strategy=foo", "train.seed=3"],
    ));
    assert!(
        e.starts_with("--set train.strategy=foo: `train.strategy`: unknown variant `foo`"),
        "{e}"
    );
    let e = one_line(load("", &["peft.method=lora2"]));
    assert!(
        e.starts_with("--set peft.method=lora2: `peft.method`: unknown variant `lora2`"),
        "{e}"
    );
    let e = one_line(load("", &["train.epochs=0"]));
    assert!(
        e.starts_with("--set train.epochs=0: train.epochs must be"),
        "{e}"
    );
    let e = one_line(load("", &["nme=x"]));
    assert!(e.ends_with("did you mean `name`?"), "{e}");

    // The file's own errors name the file, whatever the overrides.
    let e = one_line(load("[train]\nepoch = 1\n", &["train.lr=1e-3"]));
    assert!(e.contains("c.toml: `train`: unknown field `epoch`"), "{e}");
    assert!(e.ends_with("did you mean `train.epochs`?"), "{e}");
    let e = one_line(load("[train]\nstrategy = \"foo\"\n", &[]));
    assert!(
        e.contains("c.toml: `train.strategy`: unknown variant `foo`"),
        "{e}"
    );
    let e = one_line(load("[train]\nepochs = 0\n", &["train.lr=1e-3"]));
    assert!(e.contains("c.toml: train.epochs must be"), "{e}");
    let e = one_line(load("[train]\nepochs = \n", &[]));
    assert!(
        e.contains("c.toml: invalid TOML at line 2, column 10: string values must be quoted"),
        "{e}"
    );
    // An override may repair the file.
    assert_eq!(
        load("[train]\nepochs = 0\n", &["train.epochs=2"])
            .unwrap()
            .train
            .epochs,
        2
    );
    // No suggestion for a key that is nothing like the known ones.
    let e = one_line(load("", &["train.zzzzzzzz=1"]));
    assert!(!e.contains("did you mean"), "{e}");
}
