//! GGUF written by our writer reads back identically; split files read as one model; the same
//! input always gives the same bytes; several outputs come from one pass.

use crate::common;
use smelt::fixture::TinyLlama;
use smelt::gguf::writer::TensorDecl;
use smelt::gguf::{GgmlType, GgufWriter, Value};
use smelt::store::Store;
use smelt::write::{self, OutputFile, PlannedTensor};

fn tiny(dir: &std::path::Path, dtype: GgmlType) -> std::path::PathBuf {
    let p = dir.join(format!("tiny-{dtype}.gguf"));
    TinyLlama {
        dtype,
        ..Default::default()
    }
    .write_gguf(&p)
    .unwrap();
    p
}

#[test]
fn fixture_reads_back_with_metadata_and_values() {
    let dir = common::scratch();
    let model = TinyLlama {
        dtype: GgmlType::F32,
        ..Default::default()
    };
    let p = dir.path().join("m.gguf");
    model.write_gguf(&p).unwrap();
    let store = Store::open(&p).unwrap();
    assert_eq!(store.metadata, model.gguf_metadata("m"));
    let specs = model.tensors();
    assert_eq!(store.tensors.len(), specs.len());
    for (t, spec) in store.tensors.iter().zip(&specs) {
        assert_eq!(t.name, spec.gguf_name);
        let shape: Vec<u64> = spec.torch_shape.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(t.shape, shape);
    }
    // A non-permuted tensor holds exactly the generated values.
    let i = store.find("blk.1.ffn_down.weight").unwrap();
    let spec = specs
        .iter()
        .find(|s| s.gguf_name == "blk.1.ffn_down.weight")
        .unwrap();
    assert_eq!(store.read_f32(i).unwrap(), model.values(spec));
}

#[test]
fn same_type_output_is_byte_identical_and_deterministic() {
    let dir = common::scratch();
    let src = tiny(dir.path(), GgmlType::F16);
    let store = Store::open(&src).unwrap();
    let order: Vec<usize> = (0..store.tensors.len()).collect();
    let plan = |path: &str| OutputFile {
        path: dir.path().join(path),
        metadata: store.metadata.clone(),
        tensors: store
            .tensors
            .iter()
            .map(|t| {
                Some(PlannedTensor {
                    name: t.name.clone(),
                    ty: t.ty,
                    imatrix: None,
                })
            })
            .collect(),
    };
    write::write_matrix(
        &store,
        &order,
        &[plan("a.gguf"), plan("b.gguf")],
        smelt::progress::Display::Hidden,
    )
    .unwrap();
    let a = std::fs::read(dir.path().join("a.gguf")).unwrap();
    let b = std::fs::read(dir.path().join("b.gguf")).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        a,
        std::fs::read(&src).unwrap(),
        "copying every tensor reproduces the file"
    );
}

#[test]
fn f32_through_f16_and_bf16_matches_direct_conversion() {
    let dir = common::scratch();
    let src = tiny(dir.path(), GgmlType::F32);
    let store = Store::open(&src).unwrap();
    let order: Vec<usize> = (0..store.tensors.len()).collect();
    let outs: Vec<OutputFile> = [GgmlType::F16, GgmlType::BF16]
        .iter()
        .map(|&ty| OutputFile {
            path: dir.path().join(format!("{ty}.gguf")),
            metadata: store.metadata.clone(),
            tensors: store
                .tensors
                .iter()
                .map(|t| {
                    Some(PlannedTensor {
                        name: t.name.clone(),
                        ty: if t.shape.len() > 1 { ty } else { t.ty },
                        imatrix: None,
                    })
                })
                .collect(),
        })
        .collect();
    write::write_matrix(&store, &order, &outs, smelt::progress::Display::Hidden).unwrap();
    let f16 = Store::open(dir.path().join("F16.gguf")).unwrap();
    let i = f16.find("token_embd.weight").unwrap();
    let got = f16.read_f32(i).unwrap();
    let want: Vec<f32> = store
        .read_f32(i)
        .unwrap()
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect();
    assert_eq!(got, want);
    let bf = Store::open(dir.path().join("BF16.gguf")).unwrap();
    let got = bf.read_f32(i).unwrap();
    let want: Vec<f32> = store
        .read_f32(i)
        .unwrap()
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn split_files_read_as_one_model() {
    let dir = common::scratch();
    let src = tiny(dir.path(), GgmlType::F16);
    let whole = Store::open(&src).unwrap();
    let n = whole.tensors.len();
    let halves = [(0, n / 2), (n / 2, n)];
    for (k, &(a, b)) in halves.iter().enumerate() {
        let mut meta = if k == 0 {
            whole.metadata.clone()
        } else {
            Default::default()
        };
        if k > 0 {
            meta.set("general.architecture", Value::String("llama".into()));
        }
        meta.set("split.no", Value::U16(k as u16));
        meta.set("split.count", Value::U16(2));
        meta.set("split.tensors.count", Value::I32(n as i32));
        let decls: Vec<TensorDecl> = whole.tensors[a..b]
            .iter()
            .map(|t| TensorDecl {
                name: t.name.clone(),
                shape: t.shape.clone(),
                ty: t.ty,
            })
            .collect();
        let path = dir.path().join(format!("s-{:05}-of-00002.gguf", k + 1));
        let mut w = GgufWriter::create(&path, &meta, &decls).unwrap();
        for i in a..b {
            w.write_data(whole.raw(i).unwrap()).unwrap();
        }
        w.finish().unwrap();
    }
    let split = Store::open(dir.path().join("s-00001-of-00002.gguf")).unwrap();
    assert_eq!(split.files.len(), 2);
    assert_eq!(split.metadata, whole.metadata, "split keys are dropped");
    assert_eq!(split.tensors.len(), n);
    for i in 0..n {
        assert_eq!(split.tensors[i].name, whole.tensors[i].name);
        assert_eq!(split.raw(i).unwrap(), whole.raw(i).unwrap());
    }
}

#[test]
fn unfinished_writer_leaves_nothing() {
    let dir = common::scratch();
    let target = dir.path().join("x.gguf");
    let decls = vec![TensorDecl {
        name: "a".into(),
        shape: vec![4],
        ty: GgmlType::F32,
    }];
    let mut w = GgufWriter::create(&target, &Default::default(), &decls).unwrap();
    w.write_data(&[0u8; 8]).unwrap();
    drop(w);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let w = GgufWriter::create(&target, &Default::default(), &decls).unwrap();
    assert!(w
        .finish()
        .unwrap_err()
        .to_string()
        .contains("got 0 of 16 bytes"));
    assert!(!target.exists());
}
