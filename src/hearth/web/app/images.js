// Images attached to a user message: the kinds and sizes the server takes (docs/media.md), read
// in the browser as data URLs, the only form the API takes (it fetches no web address).

export const IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp"];
export const MAX_IMAGE_BYTES = 10 * 1024 * 1024;
export const MAX_IMAGES = 16;

const BY_EXTENSION = {
  png: "image/png",
  jpg: "image/jpeg",
  jpeg: "image/jpeg",
  gif: "image/gif",
  bmp: "image/bmp",
  webp: "image/webp",
};
const DATA_URL = /^data:image\/(?:png|jpeg|gif|bmp|webp);base64,[A-Za-z0-9+/]*={0,2}$/;

// Whether a stored or imported value is an image this page made: nothing else is ever shown.
export function isImageURL(value) {
  return typeof value === "string" && DATA_URL.test(value);
}

// The file's type when the server takes it, else null (a file without one goes by its name).
function imageType(file) {
  if (file.type) return IMAGE_TYPES.includes(file.type) ? file.type : null;
  const extension = (file.name.split(".").pop() || "").toLowerCase();
  return BY_EXTENSION[extension] || null;
}

function dataURL(file, type) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const url = String(reader.result);
      resolve(`data:${type};base64,${url.slice(url.indexOf(",") + 1)}`);
    };
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

let next = 0;

// Files picked, pasted or dropped into {images: [{id, name, url}], problems: [words]}; at most
// `room` images are taken.
export async function readImages(files, room) {
  const images = [];
  const problems = [];
  for (const file of files) {
    const type = imageType(file);
    const name = file.name || "The pasted file";
    if (!type) {
      problems.push(`${name} is not an image the model can take: PNG, JPEG, GIF, BMP or WebP.`);
    } else if (file.size > MAX_IMAGE_BYTES) {
      const mib = (file.size / (1024 * 1024)).toFixed(1);
      problems.push(`${name} is ${mib} MiB: an image may be at most 10 MiB.`);
    } else if (images.length >= room) {
      problems.push(`${name} was left out: a request takes at most ${MAX_IMAGES} images.`);
    } else {
      try {
        next += 1;
        images.push({ id: next, name: file.name || "pasted image", url: await dataURL(file, type) });
      } catch (problem) {
        problems.push(`${name} cannot be read: ${problem.message}`);
      }
    }
  }
  return { images, problems };
}
