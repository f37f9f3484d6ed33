#ifndef CPNG_SHIM_H
#define CPNG_SHIM_H
#include <png.h>
#include <stdio.h>
#include <string.h>

/// Writes an 8-bit RGB image (`height` rows top to bottom, `width` * 3 bytes each) to `path` as PNG with
/// libpng's simplified API (PNG_FORMAT_RGB is a macro Swift cannot import). Returns 0, or 1 with libpng's
/// message in `err`.
static inline int cpng_write_rgb(const char *path, unsigned width, unsigned height, const unsigned char *rgb,
                                 char *err, size_t errlen) {
    png_image image;
    memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    image.width = width;
    image.height = height;
    image.format = PNG_FORMAT_RGB;
    if (!png_image_write_to_file(&image, path, 0, rgb, 0, NULL)) {
        snprintf(err, errlen, "%s", image.message);
        png_image_free(&image);
        return 1;
    }
    return 0;
}

/// The linked libpng's version string.
static inline const char *cpng_version(void) { return png_get_libpng_ver(NULL); }
#endif
