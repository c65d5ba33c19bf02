// CADC node pack: frontend extension.
//
// * "Load CADC" gets an upload button (and accepts a dropped file): the file goes to ComfyUI's
//   input folder through the stock POST /upload/image route and is selected in the combo.
// * Every CADC node that reports `cadc_info` in its UI output (bpp and size, the caption) shows
//   that text in a read-only box on the node. Neither widget is saved into the workflow.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const LOAD_NODE = "CADCLoadBitstream";
const FILE_INPUT = "cadc_file";
const INFO_WIDGET = "cadc_info";

function keepOutOfWorkflow(widget) {
  widget.serialize = false;
  widget.options = { ...(widget.options ?? {}), serialize: false };
}

async function uploadCadc(file) {
  const body = new FormData();
  body.append("image", file, file.name);
  body.append("type", "input");
  body.append("overwrite", "true");
  const resp = await api.fetchApi("/upload/image", { method: "POST", body });
  if (resp.status !== 200) {
    throw new Error(`upload of ${file.name} failed: ${resp.status} ${resp.statusText}`);
  }
  const data = await resp.json();
  return data.subfolder ? `${data.subfolder}/${data.name}` : data.name;
}

function addUploadButton(node) {
  const combo = node.widgets?.find((w) => w.name === FILE_INPUT);
  if (!combo) return;

  const select = async (file) => {
    if (!file || !file.name.toLowerCase().endsWith(".cadc")) {
      alert("CADC: please choose a .cadc file");
      return;
    }
    try {
      const name = await uploadCadc(file);
      if (!combo.options.values.includes(name)) combo.options.values.push(name);
      combo.value = name;
      combo.callback?.(name);
      node.setDirtyCanvas(true, true);
    } catch (err) {
      alert(`CADC: ${err.message}`);
    }
  };

  const picker = document.createElement("input");
  picker.type = "file";
  picker.accept = ".cadc";
  picker.style.display = "none";
  picker.onchange = () => select(picker.files[0]).finally(() => (picker.value = ""));
  document.body.append(picker);

  const button = node.addWidget("button", "upload .cadc file", null, () => picker.click());
  keepOutOfWorkflow(button);

  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    picker.remove();
    return onRemoved?.apply(this, arguments);
  };
  node.onDragOver = (e) => [...(e.dataTransfer?.items ?? [])].some((i) => i.kind === "file");
  node.onDragDrop = (e) => {
    const file = e.dataTransfer?.files?.[0];
    if (!file) return false;
    select(file);
    return true;
  };
}

function showInfo(node, lines) {
  let widget = node.widgets?.find((w) => w.name === INFO_WIDGET);
  if (!widget) {
    widget = ComfyWidgets.STRING(node, INFO_WIDGET, ["STRING", { multiline: true }], app).widget;
    keepOutOfWorkflow(widget);
    if (widget.inputEl) {
      widget.inputEl.readOnly = true;
      widget.inputEl.style.opacity = 0.8;
    }
  }
  widget.value = lines.join("\n");
  node.setDirtyCanvas(true, true);
}

app.registerExtension({
  name: "cadc.nodes",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.category !== "CADC" && !nodeData.category?.startsWith("CADC/")) return;

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      const result = onExecuted?.apply(this, arguments);
      if (message?.[INFO_WIDGET]) showInfo(this, message[INFO_WIDGET]);
      return result;
    };

    if (nodeData.name === LOAD_NODE) {
      const onNodeCreated = nodeType.prototype.onNodeCreated;
      nodeType.prototype.onNodeCreated = function () {
        const result = onNodeCreated?.apply(this, arguments);
        addUploadButton(this);
        return result;
      };
    }
  },
});
