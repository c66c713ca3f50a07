//! The arm64 `Image` header (Linux `Documentation/arch/arm64/booting.rst`):
//! where a boot loader places a kernel in RAM.

/// `text_offset` and `image_size` of an arm64 Image header; (0x80000, 0),
/// what booting.rst says to assume, when the header is absent or predates
/// `image_size`.
pub fn header(image: &[u8]) -> (u64, u64) {
    let word = |o: usize| {
        image
            .get(o..o + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let magic = image.get(56..60) == Some(b"ARM\x64");
    if magic && word(16) != 0 {
        (word(8), word(16))
    } else {
        (0x80000, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(text_offset: u64, image_size: u64) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[8..16].copy_from_slice(&text_offset.to_le_bytes());
        h[16..24].copy_from_slice(&image_size.to_le_bytes());
        h[56..60].copy_from_slice(b"ARM\x64");
        h
    }

    #[test]
    fn reads_the_header_of_a_modern_image() {
        assert_eq!(header(&image(0, 0x1a0_0000)), (0, 0x1a0_0000));
    }

    #[test]
    fn old_or_foreign_images_get_the_documented_default() {
        assert_eq!(header(&image(0, 0)), (0x80000, 0), "no image_size");
        let mut no_magic = image(0, 0x1000);
        no_magic[56] = 0;
        assert_eq!(header(&no_magic), (0x80000, 0));
        assert_eq!(header(&[0u8; 10]), (0x80000, 0), "too short");
    }
}
