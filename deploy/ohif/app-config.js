/** OHIF Viewer v3 configuration for NeuroGate: one DICOMweb data source, Orthanc.
 *
 * The browser talks only to the OHIF container; its nginx proxies /dicom-web/ to Orthanc's
 * DICOMweb plugin (deploy/ohif/nginx.conf.template), so every URL here is same-origin and
 * relative, and no credential is in this file. NeuroGate's results show up in the study they
 * were made from: the SEG as a segmentation overlay, the TID 1500 SR as measurements, the
 * Grad-CAM secondary capture and the PDF report as their own series.
 */
window.config = {
  routerBasename: '/',
  showStudyList: true,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: true,
  strictZSpacingForVolumeViewport: true,
  // Orthanc's DICOMweb answers fast on a LAN; keep the number of parallel requests moderate.
  maxNumberOfWebWorkers: 3,
  maxNumRequests: { interaction: 100, thumbnail: 75, prefetch: 25 },
  extensions: [],
  modes: [],
  defaultDataSourceName: 'orthanc',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'orthanc',
      configuration: {
        friendlyName: 'Orthanc (NeuroGate PACS)',
        name: 'orthanc',
        wadoUriRoot: '/dicom-web',
        qidoRoot: '/dicom-web',
        wadoRoot: '/dicom-web',
        qidoSupportsIncludeField: false,
        supportsReject: false,
        dicomUploadEnabled: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        // The PDF report as bulk data: Orthanc's DICOMweb (1.7) cannot /rendered a PDF.
        singlepart: 'bulkdata,video',
        omitQuotationForMultipartRequest: true,
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      },
    },
  ],
};
