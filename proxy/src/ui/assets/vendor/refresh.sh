#!/bin/sh
# Rebuilds the vendored browser libraries from package-lock.json: `npm ci`, then copies the built dist files and
# their licences here. The tollgate binary embeds these files (proxy/src/ui/assets.rs), so the UI works offline.
# Run after changing package.json (then `npm install --package-lock-only` first) and commit the result.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
cp node_modules/cytoscape/dist/cytoscape.min.js cytoscape.min.js
cp node_modules/cytoscape/LICENSE LICENSE.cytoscape
cp node_modules/layout-base/layout-base.js layout-base.js
cp node_modules/layout-base/LICENSE LICENSE.layout-base
cp node_modules/cose-base/cose-base.js cose-base.js
cp node_modules/cose-base/LICENSE LICENSE.cose-base
cp node_modules/cytoscape-fcose/cytoscape-fcose.js cytoscape-fcose.js
cp node_modules/cytoscape-fcose/LICENSE LICENSE.cytoscape-fcose
rm -rf node_modules
echo "vendored: $(ls *.js | tr '\n' ' ')"
