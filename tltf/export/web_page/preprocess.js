/* tltf web page: an image file -> the pixels a tltf model takes, as tltf.runtime.images computes them in Python.
 *
 * decode:  the browser's own decoder (createImageBitmap), with no colour-profile conversion, no EXIF rotation and
 *          no alpha premultiplication -- Pillow applies none of them either -- then the RGB of a 2D canvas.
 * resize:  Pillow's BILINEAR filter on float32 planes (mode "F"), re-implemented here line for line: the triangle
 *          kernel widened by the scale when shrinking (antialiased), half-pixel centres, horizontal pass then
 *          vertical, sums in double precision and a float32 image between the passes, exactly as Pillow's
 *          Resample.c does; then clipped to [0, 255].
 * Result:  float32 NHWC (1, H, W, 3), RGB in [0, 255]; normalisation happens inside the model.
 */
(function (root) {
  "use strict";

  /* Pillow's precompute_coeffs for the bilinear filter (support 1), box (0, inSize). */
  function coefficients(inSize, outSize) {
    const scale = inSize / outSize;
    const filterscale = scale < 1.0 ? 1.0 : scale;
    const support = 1.0 * filterscale;
    const ksize = Math.ceil(support) * 2 + 1;
    const bounds = new Int32Array(outSize * 2);
    const kk = new Float64Array(outSize * ksize);
    const ss = 1.0 / filterscale;
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      let xmin = Math.trunc(center - support + 0.5);
      if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5);
      if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      let ww = 0.0;
      for (let x = 0; x < xmax; x++) {
        const t = Math.abs((x + xmin - center + 0.5) * ss);
        const w = t < 1.0 ? 1.0 - t : 0.0;
        kk[xx * ksize + x] = w;
        ww += w;
      }
      if (ww !== 0.0) for (let x = 0; x < xmax; x++) kk[xx * ksize + x] /= ww;
      bounds[xx * 2] = xmin;
      bounds[xx * 2 + 1] = xmax;
    }
    return { ksize, bounds, kk };
  }

  /* rgba: Uint8ClampedArray (or any array) of width*height*4 (RGBA, as a canvas gives it); returns Float32Array
   * outH*outW*3, NHWC RGB in [0, 255]. */
  function resizeRGBA(rgba, width, height, outH, outW) {
    const needH = outW !== width, needV = outH !== height;
    const horiz = coefficients(width, outW), vert = coefficients(height, outH);
    const vbounds = Int32Array.from(vert.bounds);
    // source rows the vertical pass reads
    const first = vbounds[0], last = vbounds[outH * 2 - 2] + vbounds[outH * 2 - 1];
    let temp, tempW, rowOffset;
    if (needH) {
      for (let i = 0; i < outH; i++) vbounds[i * 2] -= first;
      const rows = last - first;
      temp = new Float32Array(rows * outW * 3);
      const { ksize, bounds, kk } = horiz;
      for (let y = 0; y < rows; y++) {
        const src = (y + first) * width * 4, dst = y * outW * 3;
        for (let xx = 0; xx < outW; xx++) {
          const xmin = bounds[xx * 2], xmax = bounds[xx * 2 + 1], k = xx * ksize;
          let r = 0.0, g = 0.0, b = 0.0;
          for (let x = 0; x < xmax; x++) {
            const p = src + (x + xmin) * 4, w = kk[k + x];
            r += rgba[p] * w; g += rgba[p + 1] * w; b += rgba[p + 2] * w;
          }
          temp[dst + xx * 3] = r; temp[dst + xx * 3 + 1] = g; temp[dst + xx * 3 + 2] = b;
        }
      }
      tempW = outW; rowOffset = 0;
    } else {
      temp = new Float32Array(width * height * 3);
      for (let i = 0, j = 0; i < width * height; i++, j += 4) {
        temp[i * 3] = rgba[j]; temp[i * 3 + 1] = rgba[j + 1]; temp[i * 3 + 2] = rgba[j + 2];
      }
      tempW = width; rowOffset = 0;
    }
    let out = temp;
    if (needV) {
      out = new Float32Array(outH * outW * 3);
      const { ksize, kk } = vert;
      for (let yy = 0; yy < outH; yy++) {
        const ymin = vbounds[yy * 2] + rowOffset, ymax = vbounds[yy * 2 + 1], k = yy * ksize;
        for (let xx = 0; xx < outW; xx++) {
          let r = 0.0, g = 0.0, b = 0.0;
          for (let y = 0; y < ymax; y++) {
            const p = ((y + ymin) * tempW + xx) * 3, w = kk[k + y];
            r += temp[p] * w; g += temp[p + 1] * w; b += temp[p + 2] * w;
          }
          const q = (yy * outW + xx) * 3;
          out[q] = r; out[q + 1] = g; out[q + 2] = b;
        }
      }
    }
    for (let i = 0; i < out.length; i++) out[i] = out[i] < 0 ? 0 : out[i] > 255 ? 255 : out[i];
    return out;
  }

  /* A Blob (a dropped file, a fetch response) -> {rgba, width, height}: the browser decodes it without colour
   * management, EXIF rotation or premultiplied alpha. */
  async function decode(blob) {
    let bitmap;
    const options = { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "none" };
    try {
      try {
        bitmap = await createImageBitmap(blob, options);
      } catch (e) {
        if (!(e instanceof TypeError)) throw e;  // a browser without imageOrientation "none"
        delete options.imageOrientation;
        bitmap = await createImageBitmap(blob, options);
      }
    } catch (e) {
      throw new Error(`not a readable image (${e.name || e})`);
    }
    const { width, height } = bitmap;
    const canvas = typeof OffscreenCanvas !== "undefined" ? new OffscreenCanvas(width, height)
      : Object.assign(document.createElement("canvas"), { width, height });
    const ctx = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    return { rgba: ctx.getImageData(0, 0, width, height).data, width, height };
  }

  /* A Blob -> {pixels: Float32Array (H*W*3, NHWC), width, height} at the model's [H, W]. */
  async function pixels(blob, size) {
    const image = await decode(blob);
    return { pixels: resizeRGBA(image.rgba, image.width, image.height, size[0], size[1]),
             width: image.width, height: image.height, rgba: image.rgba };
  }

  const api = { coefficients, resizeRGBA, decode, pixels };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  root.tltfPreprocess = api;
})(typeof globalThis !== "undefined" ? globalThis : this);
