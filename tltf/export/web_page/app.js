/* tltf web page: classify images with onnxruntime-web (wasm backend), everything served from this folder.
 *
 * For scripts and tests:  await window.tltfReady  -> {inputs, outputs, imageSize, threads, ortVersion}
 *                         await window.tltfClassify(urlOrBlob)
 *                           -> {width, height, outputs: [{name, top: [{index, label, score}], probabilities}],
 *                               top, ms: {decode, resize, inference, total}}
 *                         await window.tltfPixels(urlOrBlob) -> the model's input, H*W*3 floats (NHWC)
 *                         await window.tltfBenchmark(urlOrBlob, runs) -> inference ms of each run
 */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const status = (text, error) => { $("status").textContent = text; $("status").className = error ? "error" : ""; };
  const times = [];  // per classified image: {inference, total}

  async function load() {
    if (location.protocol === "file:") {
      throw new Error("open this page over http (WebAssembly is not loaded from file://): " +
                      "python -m http.server -d THIS_FOLDER 8000, then http://localhost:8000/");
    }
    const config = await (await fetch("model.json")).json();
    const labels = await (await fetch("labels.json")).json();
    ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
    // onnxruntime-web threads need a cross-origin-isolated page (COOP/COEP headers); else one thread
    ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    const session = await ort.InferenceSession.create(config.model,
      { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    const heads = config.outputs.map((head) => ({ name: head.name, classes: head.classes || labels }));
    const app = { config, session, heads, threads: ort.env.wasm.numThreads };
    // one run on a blank image: the first image dropped is then timed like the rest (the first run of a session
    // sets up its kernels: 600-800 ms for MobileNetV2, against 60-190 ms after)
    const [h, w] = config.image_size;
    await run(app, new Float32Array(h * w * 3));
    return app;
  }

  const ready = load();

  async function toBlob(source) {
    if (source instanceof Blob) return source;
    const response = await fetch(source);
    if (!response.ok) throw new Error(`${source}: HTTP ${response.status}`);
    return await response.blob();
  }

  /* a binary head's single sigmoid becomes two columns, as tltf.runtime.outputs.class_probabilities does */
  function probabilities(data) {
    const p = Array.from(data);
    return p.length === 1 ? [1 - p[0], p[0]] : p;
  }

  function topK(probs, classes, k) {
    const order = probs.map((score, index) => index).sort((a, b) => probs[b] - probs[a] || a - b);
    const names = classes && classes.length === probs.length ? classes : null;
    return order.slice(0, Math.max(1, Math.min(k, probs.length)))
      .map((index) => ({ index, label: names ? names[index] : null, score: probs[index] }));
  }

  async function pixelsOf(app, blob) {
    const [h, w] = app.config.image_size;
    const t0 = performance.now();
    const image = await tltfPreprocess.decode(blob);
    if (image.width * image.height > app.config.max_pixels) {
      throw new Error(`a ${image.width}x${image.height} image is larger than the ${app.config.max_pixels} pixels ` +
                      "tltf decodes (downscale it first)");
    }
    const t1 = performance.now();
    const pixels = tltfPreprocess.resizeRGBA(image.rgba, image.width, image.height, h, w);
    const t2 = performance.now();
    return { pixels, width: image.width, height: image.height, decode: t1 - t0, resize: t2 - t1 };
  }

  async function run(app, pixels) {
    const [h, w] = app.config.image_size;
    const feeds = { [app.config.input_name]: new ort.Tensor("float32", pixels, [1, h, w, 3]) };
    return await app.session.run(feeds, app.heads.map((head) => head.name));
  }

  async function classify(source) {
    const app = await ready;
    const blob = await toBlob(source);
    const start = performance.now();
    const image = await pixelsOf(app, blob);
    const t0 = performance.now();
    const results = await run(app, image.pixels);
    const inference = performance.now() - t0;
    const outputs = app.heads.map((head) => {
      const probs = probabilities(results[head.name].data);
      return { name: head.name, top: topK(probs, head.classes, app.config.top_k), probabilities: probs };
    });
    const total = performance.now() - start;
    times.push({ inference, total });
    return { width: image.width, height: image.height, outputs, top: outputs[0].top,
             ms: { decode: image.decode, resize: image.resize, inference, total } };
  }

  async function benchmark(source, runs) {
    const app = await ready;
    const image = await pixelsOf(app, await toBlob(source));
    const ms = [];
    for (let i = 0; i < (runs || 20); i++) {
      const t0 = performance.now();
      await run(app, image.pixels);
      ms.push(performance.now() - t0);
    }
    return ms;
  }

  const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };

  function show(file, result, error) {
    const item = document.createElement("div");
    item.className = "result";
    const img = document.createElement("img");
    img.src = URL.createObjectURL(file);
    img.alt = file.name;
    const body = document.createElement("div");
    body.style.flex = "1";
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = file.name;
    body.append(name);
    if (error) {
      const line = document.createElement("div");
      line.className = "error";
      line.textContent = `${file.name}: not classified (${error.message || error})`;
      body.append(line);
    } else {
      for (const output of result.outputs) {
        if (result.outputs.length > 1) {
          const task = document.createElement("div");
          task.className = "task";
          task.textContent = output.name;
          body.append(task);
        }
        for (const t of output.top) {
          const row = document.createElement("div");
          row.className = "row";
          const label = document.createElement("span");
          label.textContent = t.label === null ? `class ${t.index}` : t.label;
          const bar = document.createElement("div");
          bar.className = "bar";
          bar.style.width = `${Math.max(0.5, 100 * t.score).toFixed(1)}%`;
          const score = document.createElement("span");
          score.className = "score";
          score.textContent = t.score.toFixed(4);
          row.append(label, bar, score);
          body.append(row);
        }
      }
      const ms = document.createElement("div");
      ms.className = "ms";
      ms.textContent = `${result.width}x${result.height} · model ${result.ms.inference.toFixed(1)} ms · ` +
                       `decode+resize ${(result.ms.decode + result.ms.resize).toFixed(1)} ms`;
      body.append(ms);
    }
    item.append(img, body);
    $("results").prepend(item);
    if (times.length) {
      $("speed").textContent = `${median(times.map((t) => t.inference)).toFixed(1)} ms/image in the model, ` +
        `${median(times.map((t) => t.total)).toFixed(1)} ms/image with decoding and resizing ` +
        `(median of ${times.length}, wasm)`;
    }
  }

  async function classifyFiles(files) {
    for (const file of files) {
      if (!file.type.startsWith("image/") && !/\.(jpe?g|png|bmp|gif|webp)$/i.test(file.name)) continue;
      try {
        show(file, await classify(file));
      } catch (e) {
        show(file, null, e);
      }
    }
  }

  window.tltfReady = ready.then((app) => ({
    inputs: app.session.inputNames, outputs: app.heads.map((h) => h.name), imageSize: app.config.image_size,
    threads: app.threads, ortVersion: app.config.onnxruntime_web && app.config.onnxruntime_web.version,
  }));
  window.tltfClassify = classify;
  // the model's input for an image, as a plain array (H*W*3, NHWC): to compare with tltf.runtime.images
  window.tltfPixels = async (source) => Array.from((await pixelsOf(await ready, await toBlob(source))).pixels);
  window.tltfBenchmark = benchmark;

  ready.then((app) => {
    const [h, w] = app.config.image_size;
    const name = app.config.backbone ? `${app.config.backbone} classifier` : "tltf classifier";
    document.title = name;
    $("title").textContent = name;
    const classes = app.heads.map((head) => head.classes ? head.classes.length : "?").join(" + ");
    status(`${classes} classes · ${h}x${w} input · onnxruntime-web ${app.config.onnxruntime_web.version} ` +
           `(wasm, ${app.threads} thread${app.threads === 1 ? "" : "s"}) · ready`);
    $("files").disabled = false;
  }, (e) => status(`cannot load the model: ${e.message || e}`, true));

  $("files").addEventListener("change", (e) => classifyFiles(Array.from(e.target.files)));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    classifyFiles(Array.from(e.dataTransfer.files));
  });
  // dropping anywhere on the page classifies, rather than opening the image in the tab
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => { if (!drop.contains(e.target)) { e.preventDefault(); classifyFiles(Array.from(e.dataTransfer.files)); } });
})();
