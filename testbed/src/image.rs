//! Screenshots in tests: where to keep them and how to tell one is not blank.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where test screenshots go: `$GUILDNET_TESTBED_ARTIFACTS/<group>` if that variable is set,
/// else `$CARGO_TARGET_DIR/guildnet-artifacts/<group>` (or `target/...`), so they can be looked
/// at after the run.
pub fn artifact_dir(group: &str) -> PathBuf {
    let base = std::env::var_os("GUILDNET_TESTBED_ARTIFACTS")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"))
                .join("guildnet-artifacts")
        });
    let dir = base.join(group);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A decoded image: width, height and RGB pixels.
#[derive(Debug, Clone)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixels, row by row.
    pub rgb: Vec<[u8; 3]>,
}

impl Image {
    /// The pixel at (x, y).
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        self.rgb[(y * self.width + x) as usize]
    }

    /// How many pixels have each colour, most frequent first.
    pub fn histogram(&self) -> Vec<([u8; 3], usize)> {
        let mut counts: HashMap<[u8; 3], usize> = HashMap::new();
        for p in &self.rgb {
            *counts.entry(*p).or_default() += 1;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by_key(|c| std::cmp::Reverse(c.1));
        counts
    }

    /// Whether a screenshot shows a rendered page: more than 50 colours and more than 5% of the
    /// pixels off the background colour. Returns the colour count too, for messages.
    pub fn looks_rendered(&self) -> (bool, usize) {
        let colours = self.histogram().len();
        (colours > 50 && self.non_background_share() > 0.05, colours)
    }

    /// Share of pixels (0..=1) that are not the most frequent colour: near 0 for a blank page.
    pub fn non_background_share(&self) -> f64 {
        let h = self.histogram();
        let top = h.first().map_or(0, |c| c.1);
        if self.rgb.is_empty() {
            return 0.0;
        }
        1.0 - top as f64 / self.rgb.len() as f64
    }
}

/// Decodes a PNG (as WebDriver screenshots are) into RGB pixels.
pub fn decode_png(bytes: &[u8]) -> Result<Image, String> {
    let mut decoder = png::Decoder::new(bytes);
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("PNG header: {e}"))?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("PNG frame: {e}"))?;
    let channels = info.color_type.samples();
    if channels < 3 {
        return Err(format!("unexpected PNG colour type {:?}", info.color_type));
    }
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Ok(Image {
        width: info.width,
        height: info.height,
        rgb,
    })
}

/// Reads and decodes a PNG file.
pub fn read_png(path: &Path) -> Result<Image, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    decode_png(&bytes)
}
