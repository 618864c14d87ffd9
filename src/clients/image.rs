//! Client images: the file name and bytes of an upload, checked before anything is sent.
//! Spectora takes `.jpg`, `.jpeg`, `.png` and `.gif`; the check reads the bytes too, so a
//! renamed text file never leaves the service.

use std::fmt;

use bytes::Bytes;

use super::ApiError;

/// The image formats the API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    Jpeg,
    Png,
    Gif,
}

impl ImageKind {
    /// The media type of the format.
    pub fn media_type(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "image/jpeg",
            ImageKind::Png => "image/png",
            ImageKind::Gif => "image/gif",
        }
    }

    /// The format the bytes are in, read from their first bytes (the "magic number").
    pub fn sniff(bytes: &[u8]) -> Option<ImageKind> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageKind::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageKind::Png)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(ImageKind::Gif)
        } else {
            None
        }
    }
}

/// Why an upload is refused before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The file name does not end in an accepted extension.
    #[error("the image {filename:?} must be a .jpg, .jpeg, .png or .gif file")]
    Extension { filename: String },
    /// The bytes are not a JPEG, PNG or GIF image, whatever the name says.
    #[error("the file {filename:?} is not a JPEG, PNG or GIF image (its content is not)")]
    Content { filename: String },
}

impl ImageError {
    /// The refusal as the API would answer it: a 422 that points at the image.
    pub fn into_api(self, operation: &'static str) -> ApiError {
        ApiError::unprocessable(operation, "image", self.to_string())
    }
}

/// An image to upload: a checked file name and the bytes, sent unchanged.
#[derive(Clone, PartialEq, Eq)]
pub struct Image {
    filename: String,
    bytes: Bytes,
    kind: ImageKind,
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the bytes: an image in a log line helps nobody.
        f.debug_struct("Image")
            .field("filename", &self.filename)
            .field("kind", &self.kind)
            .field("size", &self.bytes.len())
            .finish()
    }
}

impl Image {
    /// Checks the file name's extension and the bytes' format. A name whose extension
    /// names another accepted format than the bytes is kept: the media type sent is the
    /// one the bytes are in.
    pub fn new(filename: impl Into<String>, bytes: impl Into<Bytes>) -> Result<Image, ImageError> {
        let filename = filename.into();
        let bytes = bytes.into();
        let extension = filename
            .rsplit_once('.')
            .map(|(_, ext)| ext.to_ascii_lowercase());
        if !matches!(extension.as_deref(), Some("jpg" | "jpeg" | "png" | "gif")) {
            return Err(ImageError::Extension { filename });
        }
        let Some(kind) = ImageKind::sniff(&bytes) else {
            return Err(ImageError::Content { filename });
        };
        Ok(Image {
            filename,
            bytes,
            kind,
        })
    }

    /// The file name, as uploaded.
    pub fn filename(&self) -> &str {
        &self.filename
    }

    /// The bytes, unchanged.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The format the bytes are in.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The media type of the bytes.
    pub fn media_type(&self) -> &'static str {
        self.kind.media_type()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn accepts_the_four_extensions_by_content() {
        for (name, bytes, kind) in [
            ("a.png", PNG, ImageKind::Png),
            ("b.JPG", &[0xFF, 0xD8, 0xFF, 0xE0][..], ImageKind::Jpeg),
            ("c.jpeg", &[0xFF, 0xD8, 0xFF, 0xDB][..], ImageKind::Jpeg),
            ("d.gif", b"GIF89a\x01\0", ImageKind::Gif),
            ("e.gif", b"GIF87a\x01\0", ImageKind::Gif),
        ] {
            let image = Image::new(name, Bytes::from_static(bytes)).unwrap();
            assert_eq!(image.kind(), kind, "{name}");
            assert_eq!(image.filename(), name);
            assert_eq!(image.bytes().as_ref(), bytes);
        }
    }

    #[test]
    fn refuses_other_extensions() {
        for name in ["a.pdf", "png", "a.png.exe", "a.webp", ""] {
            let err = Image::new(name, Bytes::from_static(PNG)).unwrap_err();
            assert!(matches!(err, ImageError::Extension { .. }), "{name}");
        }
    }

    #[test]
    fn refuses_a_renamed_file_by_its_content() {
        let err = Image::new("photo.png", Bytes::from_static(b"hello, world")).unwrap_err();
        assert!(matches!(err, ImageError::Content { .. }));
        let api = err.into_api("set_image");
        assert_eq!(api.status, Some(422));
        assert_eq!(api.pointer.as_deref(), Some("/data/attributes/image"));
        assert!(Image::new("empty.gif", Bytes::new()).is_err());
    }

    #[test]
    fn the_media_type_follows_the_bytes() {
        let image = Image::new("photo.jpg", Bytes::from_static(PNG)).unwrap();
        assert_eq!(image.media_type(), "image/png");
        assert!(!format!("{image:?}").contains("PNG"));
    }
}
