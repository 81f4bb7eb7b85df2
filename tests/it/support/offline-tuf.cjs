// `npm audit signatures` looks a registry's keys up first in sigstore's TUF repository, on the
// internet, which the tests do not reach. For a registry TUF does not know, npm fetches the
// keys from the registry's own `/-/npm/v1/keys`: this makes TUF answer "unknown" offline, so
// the rest of npm's real code runs (loaded with NODE_OPTIONS=--require).
const Module = require('module');
const load = Module._load;
Module._load = function (request, ...rest) {
  if (request === '@sigstore/tuf') {
    const unknown = async () => {
      throw Object.assign(new Error('TUF is offline in the tests'), { code: 'TUF_FIND_TARGET_ERROR' });
    };
    return { initTUF: async () => ({ getTarget: unknown }) };
  }
  return load.call(this, request, ...rest);
};
