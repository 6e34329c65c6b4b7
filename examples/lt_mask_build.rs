//! Build the training mask of a small LightThinker layout and print it as ASCII, then one
//! inference step mask.
//!
//! `cargo run --example lt_mask_build`
use lightthinker::mask::{
    global_mask, local_mask, BlockKind, Layout, LocalIndicator, MaskFlags, ThoughtBlock,
};

fn main() -> Result<(), lightthinker::mask::MaskError> {
    // BOS Q : | a ␣b \n SPL | o0 o1 | CON | c \n SPL | o0 o1 | CON | EOS   (+1 pad), spec §6
    let tokens = "BOS Q : a ␣b \\n SPL o0 o1 CON c \\n SPL o0 o1 CON EOS PAD";
    let thought = |start, end| ThoughtBlock {
        start,
        end,
        l_inst: 0,
        n_comp: 2,
        n_continue: 1,
        kind: BlockKind::Output,
    };
    let layout = Layout {
        len: 17,
        blocks: vec![thought(3, 7), thought(10, 13)],
    };
    for (name, flags) in [
        ("all flags false (train.sh)", MaskFlags::default()),
        (
            "see_current",
            MaskFlags {
                see_current: true,
                ..MaskFlags::default()
            },
        ),
    ] {
        let mask = global_mask(&layout, &flags, Some(18))?;
        println!("== global mask, {name}: {} x {}", mask.rows(), mask.cols());
        for (label, row) in tokens.split(' ').zip(mask.to_ascii().lines()) {
            println!("{label:>4} {row}");
        }
    }
    // Inference: 6 prompt slots + a 3-token thought cached; the step feeds [S, o0, o1, K].
    let step = local_mask(
        9,
        4,
        Some(&LocalIndicator::lightthinker(6, 9, 2)),
        &MaskFlags::default(),
    )?;
    println!("== local step mask (4 rows x 13 cached+new columns)");
    for (label, row) in ["S", "o0", "o1", "K"].iter().zip(step.to_ascii().lines()) {
        println!("{label:>4} {row}");
    }
    Ok(())
}
