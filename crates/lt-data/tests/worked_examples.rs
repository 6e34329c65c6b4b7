//! The worked examples of the reference spec (§3.2–§3.6, §4.2, §5, §6), reproduced with the spec's
//! stand-in word-level tokenizer: registered special tokens first, then `␣?\w+`, `␣?[^\w\s]+`, `\n`, runs
//! of spaces/tabs; new tokens get ids 1000+ in list order.
use lt_data::{
    collate, BuildOptions, Builder, BuiltRow, CompressConfig, LtTokenizer, Mode, PadTo,
    TrainSample, IGNORE,
};
use lt_mask::MaskFlags;
use serde_json::json;

const WORDS: &[&str] = &[
    "<s>", "</s>", "[UNK]", "Q", ":", "a", " b", "\n", "c", "S", ".", " Sum", " it", "w", " x",
];

fn stand_in() -> LtTokenizer {
    let mut vocab = serde_json::Map::new();
    for (i, w) in WORDS.iter().enumerate() {
        vocab.insert(w.to_string(), json!(i));
    }
    for i in WORDS.len()..1000 {
        vocab.insert(format!("<filler{i}>"), json!(i));
    }
    let added = |id: usize, s: &str| {
        json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(0, "<s>"), added(1, "</s>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": " ?\\w+| ?[^\\w\\s]+|\\n|[ \\t]+"},
                          "behavior": "Isolated", "invert": false},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    });
    let tok: tokenizers::Tokenizer = tj.to_string().parse().unwrap();
    LtTokenizer::from_tokenizer(tok)
}

fn mini_config(n: usize) -> CompressConfig {
    serde_json::from_value(json!({
        "template": {"model": "llama", "prefix": "", "middle": "", "suffix": ":", "complete": "{system}{question}:"},
        "prompt": {"save_template": true, "level": "sentence", "step": 1, "n_token": n,
                   "token_name": "<|o_{t_id}|>", "token_desp": "compress output {t_id}"},
        "output": {"level": "sentence", "step": 1, "n_token": n, "token_name": "<|o_{t_id}|>",
                   "token_desp": "compress output {t_id}"}
    }))
    .unwrap()
}

fn sample(thoughts: &[&str]) -> TrainSample {
    TrainSample::from_value(json!({
        "question": "Q", "system_prompt": "", "system_list": ["S."], "question_list": ["Q"],
        "thoughts_list": thoughts, "gt_output": thoughts.join("\n\n"),
    }))
    .unwrap()
}

fn opts(mode: Mode, p: usize) -> BuildOptions {
    BuildOptions {
        mode,
        hybrid: false,
        max_length: p,
        train_on_input: false,
        flags: MaskFlags::default(),
        output_compress_instruction: String::new(),
        bos_token: "<s>".into(),
        eos_token: "</s>".into(),
    }
}

struct Fx {
    cfg: CompressConfig,
    tok: LtTokenizer,
}

impl Fx {
    fn new() -> Self {
        let cfg = mini_config(2);
        let mut tok = stand_in();
        let added = tok.add_special_tokens(&cfg);
        assert_eq!(
            added[0],
            ("<|splitter|>".to_string(), 1000, "\n\n".to_string())
        );
        assert_eq!(added.len(), 8 + 2, "llama list: 8 fixed + 2 cache tokens");
        Fx { cfg, tok }
    }
    fn build(&self, o: BuildOptions, s: &TrainSample) -> Vec<BuiltRow> {
        Builder::new(&self.cfg, &self.tok, o)
            .unwrap()
            .build(s)
            .unwrap()
    }
    /// Symbolic token names as in the spec tables.
    fn names(&self, ids: &[i64]) -> Vec<String> {
        ids.iter()
            .map(|&i| {
                let t = self.tok.id_to_token(i as u32).unwrap();
                match t.as_str() {
                    "<s>" => "BOS".into(),
                    "</s>" => "EOS".into(),
                    "<|splitter|>" => "SPL".into(),
                    "<|continue|>" => "CON".into(),
                    "<|recover|>" => "REC".into(),
                    "<|o_0|>" => "o0".into(),
                    "<|o_1|>" => "o1".into(),
                    "\n" => "\\n".into(),
                    "\n\n" => "\\n\\n".into(),
                    " b" => "␣b".into(),
                    " Sum" => "␣Sum".into(),
                    " it" => "␣it".into(),
                    other => other.into(),
                }
            })
            .collect()
    }
}

fn split(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn locate(row: &BuiltRow) -> Vec<(usize, usize, usize, usize, usize)> {
    row.layout
        .as_ref()
        .unwrap()
        .blocks
        .iter()
        .map(|b| (b.start, b.end, b.l_inst, b.n_comp, b.n_continue))
        .collect()
}

/// Labels as symbols: "-" for ignored.
fn label_names(fx: &Fx, row: &BuiltRow) -> Vec<String> {
    row.labels
        .iter()
        .map(|&l| {
            if l == IGNORE {
                "-".to_string()
            } else {
                fx.names(&[l])[0].clone()
            }
        })
        .collect()
}

fn grid(mask: &lt_mask::IntervalMask, r: usize) -> String {
    (0..mask.cols())
        .map(|c| if mask.is_visible(r, c) { '#' } else { '.' })
        .collect()
}

#[test]
fn s3_2_normal_mode() {
    let fx = Fx::new();
    let mut s = sample(&[]);
    s.gt_output = "a b\n\nc".into();
    let row = &fx.build(opts(Mode::Normal, 12), &s)[0];
    let b = collate(
        std::slice::from_ref(row),
        &MaskFlags::default(),
        PadTo::MaxLength(12),
        1,
    )
    .unwrap();
    assert_eq!(
        fx.names(&b.input_ids),
        split("BOS Q : a ␣b \\n\\n c EOS EOS EOS EOS EOS")
    );
    let labels: Vec<String> = b
        .labels
        .iter()
        .map(|&l| {
            if l == IGNORE {
                "-".into()
            } else {
                fx.names(&[l])[0].clone()
            }
        })
        .collect();
    assert_eq!(labels, split("- - - a ␣b \\n\\n c EOS - - - -"));
    assert!(row.position_ids.is_none() && row.layout.is_none());
    assert!(b.masks.is_none());
}

#[test]
fn s3_3_aug_wo_pc_and_s6_mask() {
    let fx = Fx::new();
    let row = &fx.build(opts(Mode::AugWoPc, 18), &sample(&["a b", "c"]))[0];
    assert_eq!(locate(row), vec![(3, 7, 0, 2, 1), (10, 13, 0, 2, 1)]);
    assert_eq!(
        fx.names(&row.input_ids),
        split("BOS Q : a ␣b \\n SPL o0 o1 CON c \\n SPL o0 o1 CON EOS")
    );
    assert_eq!(
        label_names(&fx, row),
        split("- - - a ␣b \\n SPL - - - c \\n SPL - - - EOS")
    );
    let b = collate(
        std::slice::from_ref(row),
        &MaskFlags::default(),
        PadTo::MaxLength(18),
        1,
    )
    .unwrap();
    let mut pos: Vec<i64> = (0..17).collect();
    pos.push(0);
    assert_eq!(b.position_ids, pos);
    let m = &b.masks.as_ref().unwrap()[0];
    let want = [
        "#.................",
        "##................",
        "###...............",
        "####..............",
        "#####.............",
        "######............",
        "#######...........",
        "########..........",
        "#########.........",
        "###....###........",
        "###....####.......",
        "###....#####......",
        "###....######.....",
        "###....#######....",
        "###....########...",
        "###....###...###..",
        "###....###...####.",
        "###....###...####.",
    ];
    for (r, w) in want.iter().enumerate() {
        assert_eq!(grid(m, r), *w, "row {r}");
    }
    // exclude_continue: rows 15-17 additionally lose col 9; rows 10-14 keep it.
    let ex = MaskFlags {
        exclude_continue: true,
        ..Default::default()
    };
    let m = row.mask(&ex, Some(18)).unwrap();
    assert!(!m.is_visible(15, 9) && !m.is_visible(17, 9) && m.is_visible(14, 9));
    // diagonal: row 8 sees col 8 but not col 7.
    let dg = MaskFlags {
        diagonal: true,
        ..Default::default()
    };
    let m = row.mask(&dg, Some(18)).unwrap();
    assert!(m.is_visible(8, 8) && !m.is_visible(8, 7) && m.is_visible(7, 7));
}

#[test]
fn s3_3_instruction_is_masked_and_counted() {
    let fx = Fx::new();
    let mut o = opts(Mode::AugWoPc, 40);
    o.output_compress_instruction = " Sum it:".into();
    let row = &fx.build(o, &sample(&["a b", "c"]))[0];
    assert_eq!(locate(row)[0], (3, 7, 3, 2, 1));
    assert_eq!(
        fx.names(&row.input_ids[7..13]),
        split("␣Sum ␣it : o0 o1 CON")
    );
    assert!(row.labels[7..13].iter().all(|&l| l == IGNORE));
}

#[test]
fn s3_4_aug_and_s3_6_prompt_recover() {
    let fx = Fx::new();
    let mut o = opts(Mode::Aug, 64);
    o.hybrid = true;
    let rows = fx.build(o, &sample(&["a b", "c"]));
    let row = &rows[0];
    assert_eq!(
        fx.names(&row.input_ids),
        split("BOS S . o0 o1 Q o0 o1 : a ␣b \\n SPL o0 o1 CON c \\n SPL o0 o1 CON EOS")
    );
    assert_eq!(
        locate(row),
        vec![
            (1, 3, 0, 2, 0),
            (5, 6, 0, 2, 0),
            (9, 13, 0, 2, 1),
            (16, 19, 0, 2, 1)
        ]
    );
    assert!(row.labels[..9].iter().all(|&l| l == IGNORE));
    let pr = &rows[1];
    assert_eq!(pr.hybrid_row, Some(1));
    assert_eq!(
        fx.names(&pr.input_ids),
        split("BOS S . o0 o1 Q o0 o1 : REC S . Q EOS")
    );
    assert_eq!(label_names(&fx, pr), split("- - - - - - - - - - S . Q EOS"));
}

#[test]
fn s3_5_recover_positions_and_s4_2_rows() {
    let fx = Fx::new();
    let s = sample(&["a b", "c"]);
    let row = &fx.build(opts(Mode::Recover, 32), &s)[0];
    assert_eq!(row.len(), 32);
    assert_eq!(
        fx.names(&row.input_ids[21..]),
        split("CON EOS REC a ␣b \\n SPL c \\n SPL EOS")
    );
    let pos = row.position_ids.as_ref().unwrap();
    assert_eq!(&pos[21..], &[21, 22, 22, 23, 24, 25, 26, 27, 28, 29, 30]);
    assert_eq!(
        label_names(&fx, row)[21..].to_vec(),
        split("- EOS - a ␣b \\n SPL c \\n SPL EOS")
    );
    let m = row.mask(&MaskFlags::default(), Some(32)).unwrap();
    assert_eq!(grid(&m, 22), "#..##.###....###...####.........");
    assert_eq!(grid(&m, 23), "#..##.###....###...###.#........");
    assert_eq!(grid(&m, 31), "#..##.###....###...###.#########");

    // P=30: only the first thought fits; REC at 23 with position 16.
    let row = &fx.build(opts(Mode::Recover, 30), &s)[0];
    assert_eq!(row.recover.as_ref().unwrap().keys.len(), 1);
    assert_eq!(fx.names(&row.input_ids[23..24]), vec!["REC"]);
    assert_eq!(row.position_ids.as_ref().unwrap()[23], 16);
    // P=28: budget 3 < 4, a plain aug sample.
    let row = &fx.build(opts(Mode::Recover, 28), &s)[0];
    assert!(row.recover.is_none());
    assert_eq!(row.len(), 23);
}

#[test]
fn s5_truncated_thought_keeps_its_entry_and_a_causal_mask() {
    let fx = Fx::new();
    let s = sample(&["w w w w w w w w"]);
    let row = &fx.build(opts(Mode::AugWoPc, 12), &s)[0];
    assert!(row.truncated);
    assert_eq!(row.len(), 12);
    assert_eq!(locate(row), vec![(3, 13, 0, 2, 1)]);
    let m = row.mask(&MaskFlags::default(), Some(12)).unwrap();
    for r in 0..12 {
        assert_eq!(m.row(r), &[(0, r as u32 + 1)], "row {r}");
    }
}

#[test]
fn edge_cases_empty_thoughts() {
    let fx = Fx::new();
    // Empty thoughts_list, add_eos: just [EOS] labelled, no blocks.
    let row = &fx.build(opts(Mode::AugWoPc, 16), &sample(&[]))[0];
    assert_eq!(fx.names(&row.input_ids), split("BOS Q : EOS"));
    assert_eq!(row.n_labelled(), 1);
    // add_eos=false: zero supervised tokens.
    let mut s = sample(&[]);
    s.add_eos = Some(false);
    assert_eq!(fx.build(opts(Mode::AugWoPc, 16), &s)[0].n_labelled(), 0);
    // Empty thought string: ["\n", SPL] plus its cache block.
    let row = &fx.build(opts(Mode::AugWoPc, 16), &sample(&[""]))[0];
    assert_eq!(locate(row), vec![(3, 5, 0, 2, 1)]);
    // A thought ending in "\n" forms the "\n\n" token.
    let row = &fx.build(opts(Mode::AugWoPc, 16), &sample(&["c\n"]))[0];
    assert_eq!(fx.names(&row.input_ids[3..5]), split("c \\n\\n"));
}

#[test]
fn collate_pads_to_longest_by_default() {
    let fx = Fx::new();
    let a = fx
        .build(opts(Mode::AugWoPc, 64), &sample(&["a b", "c"]))
        .remove(0);
    let b = fx.build(opts(Mode::AugWoPc, 64), &sample(&["c"])).remove(0);
    let batch = collate(
        &[a.clone(), b.clone()],
        &MaskFlags::default(),
        PadTo::Longest,
        1,
    )
    .unwrap();
    assert_eq!((batch.batch, batch.seq_len), (2, a.len()));
    let masks = batch.masks.unwrap();
    assert_eq!(masks[1].rows(), a.len());
    // b's padded rows copy its last real row and never see themselves.
    let last = b.len() - 1;
    assert_eq!(masks[1].row(last + 1), masks[1].row(last));
    assert_eq!(
        &batch.labels[a.len() + b.len()..],
        vec![IGNORE; a.len() - b.len()].as_slice()
    );
    assert!(collate(&[a], &MaskFlags::default(), PadTo::MaxLength(4), 1).is_err());
}
