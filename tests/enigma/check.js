// Connects to qliksim's Engine with Qlik's enigma.js and its published QIX schema, the way Butler does,
// and prints what it read as JSON. Usage: node check.js PORT CERT_DIR APP_ID
const fs = require('fs');
const path = require('path');
const enigma = require('enigma.js');
const WebSocket = require('ws');
const schema = require('enigma.js/schemas/12.612.0.json');

const [port, certDir, appId] = process.argv.slice(2);
const tls = {
  ca: [fs.readFileSync(path.join(certDir, 'root.pem'))],
  cert: fs.readFileSync(path.join(certDir, 'client.pem')),
  key: fs.readFileSync(path.join(certDir, 'client_key.pem')),
  headers: { 'X-Qlik-User': 'UserDirectory=Internal; UserId=sa_repository' },
};

function open(url) {
  return enigma.create({ schema, url, createSocket: (u) => new WebSocket(u, tls) });
}

(async () => {
  const out = {};
  const listSession = open(`wss://localhost:${port}`);
  const global = await listSession.open();
  out.engineVersion = (await global.engineVersion()).qComponentVersion;
  out.docs = (await global.getDocList()).map((d) => ({ id: d.qDocId, name: d.qDocName }));
  await listSession.close();

  const session = open(`wss://localhost:${port}/app/engineData`);
  const g = await session.open();
  const doc = await g.openDoc(appId, '', '', '', true);
  out.script = await doc.getScript();
  out.properties = await doc.getAppProperties();
  const sheetList = await doc.createSessionObject({
    qAppObjectListDef: { qType: 'sheet', qData: { id: '/qInfo/qId' } },
    qInfo: { qId: 'sheetList', qType: 'sheetList' }, qMetaDef: {}, qExtendsId: '',
  });
  const sheets = (await sheetList.getLayout()).qAppObjectList.qItems;
  out.sheets = [];
  for (const item of sheets) {
    const sheet = await doc.getObject(item.qInfo.qId);
    out.sheets.push(await sheet.getFullPropertyTree());
  }
  const dimList = await doc.createSessionObject({
    qDimensionListDef: { qType: 'dimension', qData: { info: '/qDimInfos' }, qMeta: {} },
    qInfo: { qId: 'DimensionList', qType: 'DimensionList' },
  });
  const dims = (await dimList.getLayout()).qDimensionList.qItems;
  out.dimensions = await Promise.all(dims.map(async (d) => (await doc.getDimension(d.qInfo.qId)).getProperties()));
  out.connections = await doc.getConnections();
  try {
    await g.openDoc('00000000-0000-0000-0000-00000000beef');
  } catch (err) {
    out.missingAppError = err.code;
  }
  await session.close();
  process.stdout.write(JSON.stringify(out));
})().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
