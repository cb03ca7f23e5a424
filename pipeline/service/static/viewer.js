// The 3D viewer of one scene: its points (binary records from /api/scenes/{scene}/points, used by
// WebGL as they arrive, without copying) and its cameras as frustums with their views' thumbnails.
// three.js is vendored with the package (static/three, see its README).
import * as THREE from "./three/three.module.min.js";
import { OrbitControls } from "./three/OrbitControls.js";

const $ = (id) => document.getElementById(id);
const STRIDE = 20; // bytes per point: float32 x, y, z; uint8 r, g, b, pad; float32 confidence
const scene = decodeURIComponent(location.pathname.split("/").pop());
const base = `/api/scenes/${encodeURIComponent(scene)}`;

const VERTEX = `
  attribute vec3 color;
  attribute float confidence;
  uniform float size;
  uniform float threshold;
  varying vec3 vColor;
  void main() {
    vColor = color;
    vec4 view = modelViewMatrix * vec4(position, 1.0);
    gl_Position = confidence < threshold ? vec4(2.0, 2.0, 2.0, 1.0) : projectionMatrix * view;
    gl_PointSize = confidence < threshold ? 0.0 : size;
  }`;
const FRAGMENT = `
  varying vec3 vColor;
  void main() { gl_FragColor = vec4(vColor, 1.0); }`;

async function getJson(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function pointCloud(buffer, count) {
  const floats = new THREE.InterleavedBuffer(new Float32Array(buffer), STRIDE / 4);
  const bytes = new THREE.InterleavedBuffer(new Uint8Array(buffer), STRIDE);
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.InterleavedBufferAttribute(floats, 3, 0));
  geometry.setAttribute("confidence", new THREE.InterleavedBufferAttribute(floats, 1, 4));
  geometry.setAttribute("color", new THREE.InterleavedBufferAttribute(bytes, 3, 12, true));
  geometry.setDrawRange(0, count);
  const material = new THREE.ShaderMaterial({ vertexShader: VERTEX, fragmentShader: FRAGMENT,
    uniforms: { size: { value: 2.0 }, threshold: { value: -Infinity } } });
  return new THREE.Points(geometry, material);
}

// centre and radius of the middle 96% of the points on each axis (a few stray points do not shrink the view)
function robustBounds(buffer, count) {
  const floats = new Float32Array(buffer);
  const step = Math.max(1, Math.floor(count / 20000));
  const axes = [[], [], []];
  for (let i = 0; i < count; i += step) for (let a = 0; a < 3; a++) axes[a].push(floats[i * 5 + a]);
  const lo = [], hi = [];
  for (const values of axes) {
    values.sort((x, y) => x - y);
    lo.push(values[Math.floor(values.length * 0.02)] ?? 0);
    hi.push(values[Math.max(0, Math.ceil(values.length * 0.98) - 1)] ?? 0);
  }
  const center = new THREE.Vector3((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2);
  const radius = Math.max(1e-3, new THREE.Vector3(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]).length() / 2);
  return { center, radius };
}

// a camera's frustum (lines) and image plane (its thumbnail), at depth `depth` in front of it
function frustum(cam, depth, loader) {
  const E = cam.extrinsic, K = cam.intrinsic;
  const R = new THREE.Matrix3().set(E[0][0], E[0][1], E[0][2], E[1][0], E[1][1], E[1][2], E[2][0], E[2][1], E[2][2]);
  const t = new THREE.Vector3(E[0][3], E[1][3], E[2][3]);
  const Rt = R.clone().transpose();
  const toWorld = (p) => p.clone().sub(t).applyMatrix3(Rt); // X_world = R^T (X_cam - t)
  const centre = toWorld(new THREE.Vector3(0, 0, 0));
  const corner = (u, v) => toWorld(new THREE.Vector3((u - K[0][2]) / K[0][0] * depth, (v - K[1][2]) / K[1][1] * depth, depth));
  const w = cam.width, h = cam.height;
  const c = [corner(0, 0), corner(w, 0), corner(w, h), corner(0, h)];
  const lines = [centre, c[0], centre, c[1], centre, c[2], centre, c[3], c[0], c[1], c[1], c[2], c[2], c[3], c[3], c[0]];
  const group = new THREE.Group();
  group.add(new THREE.LineSegments(new THREE.BufferGeometry().setFromPoints(lines),
    new THREE.LineBasicMaterial({ color: 0x5b9cff })));
  const plane = new THREE.BufferGeometry().setFromPoints([c[0], c[1], c[2], c[0], c[2], c[3]]);
  plane.setAttribute("uv", new THREE.Float32BufferAttribute([0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0], 2));
  const texture = loader.load(`${base}/views/${cam.frame_idx}/thumbnail`);
  texture.colorSpace = THREE.SRGBColorSpace;
  group.add(new THREE.Mesh(plane, new THREE.MeshBasicMaterial({ map: texture, side: THREE.DoubleSide,
    transparent: true, opacity: 0.85 })));
  return group;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function start() {
  $("title").textContent = scene;
  document.title = `${scene} · tomeray`;
  const canvas = $("canvas");
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio || 1);
  renderer.setClearColor(0x0f1217);
  const world = new THREE.Scene();
  const camera = new THREE.PerspectiveCamera(60, 1, 0.001, 1000);
  camera.up.set(0, -1, 0); // OpenCV axes: y down, z forward
  const controls = new OrbitControls(camera, canvas);
  const render = () => renderer.render(world, camera);
  const resize = () => {
    const { clientWidth: w, clientHeight: h } = canvas.parentElement;
    renderer.setSize(w, h, false);
    camera.aspect = w / Math.max(1, h);
    camera.updateProjectionMatrix();
    render();
  };
  controls.addEventListener("change", render);
  window.addEventListener("resize", resize);
  resize();

  const url = new URL(location.href);
  const max = url.searchParams.get("max");
  let summary, cameras, response;
  try {
    [summary, cameras, response] = await Promise.all([
      getJson("/api/scenes").then((b) => b.scenes.find((s) => s.scene === scene)),
      getJson(`${base}/cameras`).then((b) => b.cameras),
      fetch(`${base}/points${max ? `?max=${encodeURIComponent(max)}` : ""}`, { credentials: "same-origin" })]);
    if (!response.ok) throw new Error((await response.json()).error);
  } catch (e) {
    showError(`Cannot load the scene: ${e.message}`);
    return;
  }
  if (summary && summary.random_weights) {
    $("weights-banner").textContent = `RANDOM weights (${summary.weights_id}): this is not a real reconstruction`;
    $("weights-banner").hidden = false;
  }
  const buffer = await response.arrayBuffer();
  const count = Number(response.headers.get("X-Points-Count"));
  const total = Number(response.headers.get("X-Points-Total"));
  if (buffer.byteLength !== count * STRIDE) { showError("the points answer has the wrong length"); return; }
  $("info").textContent = `${cameras.length} views · ${summary ? summary.output : ""}`;
  const cloud = pointCloud(buffer, count);
  world.add(cloud);

  // the confidence slider: a percentile of the served points' confidences, filtered in the shader
  const confidences = new Float32Array(count);
  const floats = new Float32Array(buffer);
  for (let i = 0; i < count; i++) confidences[i] = floats[i * 5 + 4];
  confidences.sort();
  const showCount = () => {
    const p = Number($("confidence").value);
    const threshold = p > 0 ? confidences[Math.min(count - 1, Math.floor(count * p / 100))] : -Infinity;
    cloud.material.uniforms.threshold.value = threshold;
    let lo = 0, hi = count; // first index with confidence >= threshold
    while (lo < hi) { const mid = (lo + hi) >> 1; if (confidences[mid] < threshold) lo = mid + 1; else hi = mid; }
    const shown = count - lo;
    $("shown").textContent = `${shown.toLocaleString("en")} of ${total.toLocaleString("en")} points shown`;
    $("shown").dataset.shown = String(shown);
    $("shown").dataset.total = String(total);
    $("confidence-value").textContent = `${p}%`;
    render();
  };
  $("confidence").addEventListener("input", showCount);
  $("size").addEventListener("input", () => {
    cloud.material.uniforms.size.value = Number($("size").value);
    $("size-value").textContent = $("size").value;
    render();
  });

  const bounds = robustBounds(buffer, count);
  const loader = new THREE.TextureLoader();
  const frustums = new THREE.Group();
  for (const cam of cameras) frustums.add(frustum(cam, bounds.radius * 0.15, loader));
  world.add(frustums);
  THREE.DefaultLoadingManager.onLoad = render; // the thumbnails arrive after the first frame
  $("cameras").addEventListener("change", () => { frustums.visible = $("cameras").checked; render(); });

  const fit = () => {
    const direction = new THREE.Vector3(0, 0, -1); // behind the first camera's view direction
    const first = cameras[0];
    if (first) direction.set(-first.extrinsic[2][0], -first.extrinsic[2][1], -first.extrinsic[2][2]);
    const distance = bounds.radius / Math.tan(THREE.MathUtils.degToRad(camera.fov / 2));
    camera.position.copy(bounds.center).addScaledVector(direction.normalize(), distance);
    camera.near = distance / 1000;
    camera.far = distance * 100;
    camera.updateProjectionMatrix();
    controls.target.copy(bounds.center);
    controls.update();
    render();
  };
  $("fit").addEventListener("click", fit);
  fit();
  showCount();
  requestAnimationFrame(() => {
    performance.mark("points-loaded");
    document.body.dataset.points = "loaded";
  });
}

start();
